"""Answer types of API.md as msgspec Structs, so /openapi.json's schemas are
generated from types (msgspec.json.schema_components) rather than written by
hand. The system routes (query/system.py) encode their answers with these
very Structs; the other routes' answers are built elsewhere (query/views.py,
flusher/commands.py, core/health.py) and the tests hold them to these shapes."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Raw, Struct, field

from persistence_api.system import Buffer, FlusherState, Health  # noqa: F401 (the /health answer, defined once there)
from persistence_api.translation import (  # noqa: F401 (the wire types, defined once there)
    Accepted, CleanupResult, Deleted, ErrorBody, FieldProblem, FlushResult, IncompleteSessions, IsoTime, ListPage,
    Performance, Queued, RecoveryStatus, Restored, SessionCounts, SessionDetail, SessionSummary, SessionTaskPage, Stats,
    StatusUpdated, Storage, TaskCounts, TaskView)


# The list pages are generic Structs (persistence_api.translation), named here for the document.
SessionList = ListPage[SessionSummary]
TaskList = ListPage[TaskView]
SessionTaskList = SessionTaskPage[TaskView]


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
