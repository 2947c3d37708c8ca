"""Answer types of API.md as msgspec Structs, so /openapi.json's schemas are
generated from types (msgspec.json.schema_components) rather than written by
hand. The system routes (query/system.py) encode their answers with these
very Structs; the other routes' answers are built elsewhere (query/views.py,
flusher/commands.py, core/health.py) and the tests hold them to these shapes."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Raw, Struct, field

from core.health import Buffer, FlusherState, Health  # noqa: F401 (the /health answer, defined once there)
from core.records import (Accepted, CleanupResult, Deleted, FieldProblem, FlushResult, IsoTime,  # noqa: F401
                          StatusUpdated)  # the write and command answers, defined there
from query.views import (ListPage, Performance, RecoveryStatus, SessionCounts,  # noqa: F401 (defined there)
                         SessionDetail, SessionSummary, SessionTaskPage, Stats, Storage, TaskCounts, TaskView)


class ErrorBody(Struct):
    """Every error answer. Some carry more keys: session_id, task_id, request_id (500)."""
    detail: str
    error_code: str
    errors: list[FieldProblem] = []


# -- writes -------------------------------------------------------------------

# -- reads --------------------------------------------------------------------

# The list pages are query.views' own generic Structs, named here for the document.
SessionList = ListPage[SessionSummary]
TaskList = ListPage[TaskView]
SessionTaskList = SessionTaskPage[TaskView]


class IncompleteSessions(Struct):
    count: int
    sessions: list[SessionSummary]


class Restored(Struct):
    session_id: str
    session: SessionDetail
    tasks: list[TaskView]
    tasks_count: int
    restored_at: IsoTime


# -- management ---------------------------------------------------------------

class Queued(Struct):
    """202: the command is in the spool; the database did not answer within flush_timeout."""
    status: Literal["queued"]
    session_id: str | None
    detail: str


# -- system -------------------------------------------------------------------

class DeadLetterView(Struct):
    id: int
    kind: str  # session | task | delete_session | set_session_status | cleanup | unknown:<n>
    record_key: str  # empty when a whole entry was dead-lettered
    seq: int  # the spool entry it came from (0 for an expired orphan)
    received_at: IsoTime
    failed_at: IsoTime
    error: str  # the database's own text
    payload: Raw  # the record as JSON (a JSON string when the bytes were not JSON)


class DeadLetterPage(Struct):
    total: int
    items: list[DeadLetterView]
    next_after_id: int | None  # pass as after_id for the next page; null on the last one


class DeadLetterSelection(Struct, forbid_unknown_fields=True):
    """Which dead letters: `{"ids": [1, 2]}` or `{"all": true}`."""
    ids: list[Annotated[int, Meta(ge=1, le=2**63 - 1)]] = []  # SQLite integers are 64-bit
    is_all: bool = field(default=False, name="all")


class SkippedLetter(Struct):
    id: int
    reason: str


class RetryResult(Struct):
    status: Literal["retried"]
    retried: int
    retried_ids: list[int]
    skipped: list[SkippedLetter]
    not_found: list[int]


class PurgeResult(Struct):
    status: Literal["purged"]
    purged: int
