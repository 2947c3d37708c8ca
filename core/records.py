"""Wire types: the records of API.md as msgspec Structs, the single definition
used to validate requests and to decode spooled payloads.

Schema evolution (payloads are stored in the spool as the request's JSON):
new fields must have defaults; never rename or retype a field. See
wal/FORMAT.md.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from core.times import to_us

MAX_BATCH_ITEMS = 1000
MAX_TEXT_BYTES = 65_535
# A string of at most this many characters cannot exceed MAX_TEXT_BYTES in UTF-8.
_SAFE_TEXT_CHARS = MAX_TEXT_BYTES // 4
# Objects and arrays nest at most this deep in game_info and metadata (the
# field's own object is level 1): MariaDB's JSON check refuses a 32nd level.
MAX_JSON_DEPTH = 31
# Times must fall, once converted to UTC, where both sinks' DATETIME(6) and
# Python's datetime can hold them.
MIN_TIME_US = to_us(datetime(1, 1, 1, tzinfo=UTC))
MAX_TIME_US = to_us(datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))

SessionStatus = Literal["pending", "processing", "completed", "failed", "cancelled"]
TaskStatus = Literal["pending", "processing", "completed", "failed"]
Text36 = Annotated[str, Meta(min_length=1, max_length=36)]
Text50 = Annotated[str, Meta(min_length=1, max_length=50)]
Text64 = Annotated[str, Meta(min_length=1, max_length=64)]
Text255 = Annotated[str, Meta(min_length=1, max_length=255)]
Text512 = Annotated[str, Meta(min_length=1, max_length=512)]
LongText = Annotated[str, Meta(max_length=MAX_TEXT_BYTES)]
Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Confidence = Annotated[float, Meta(ge=0, le=1)]
JsonObject = dict[str, Any]
# Declared as format date-time in OpenAPI, so generated clients and fuzzers send times.
Time = Annotated[datetime, Meta(extra_json_schema={"format": "date-time"})]
# A time in an answer: ISO 8601 UTC with Z and microseconds (core.times.iso_z).
IsoTime = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]


class Session(Struct, omit_defaults=True):
    session_id: Text36
    filename: Text255
    file_path: Text512
    status: SessionStatus
    llm_provider: Text50
    game_info: JsonObject | None = None
    metadata: JsonObject | None = None
    total_tasks: Count = 0
    completed_tasks: Count = 0
    failed_tasks: Count = 0
    processing_tasks: Count = 0
    updated_at: Time | None = None

    def __post_init__(self) -> None:
        # Runs for every record decoded (ingest and flusher): a few comparisons in
        # the common case, the full check only near a limit.
        if (self.game_info or self.metadata
                or (self.updated_at is not None and not 1 < self.updated_at.year < 9999)):
            _refuse_unstorable(self)


class Task(Struct, omit_defaults=True):
    task_id: Text64
    session_id: Text36
    batch_id: Text64
    sheet_name: Text255
    row_index: Count
    column_name: Text255
    source_text: LongText
    status: TaskStatus
    target_text: LongText | None = None
    context: LongText | None = None
    confidence: Confidence | None = None
    error_message: LongText | None = None
    retry_count: Count = 0
    start_time: Time | None = None
    end_time: Time | None = None
    duration_ms: Count | None = None
    updated_at: Time | None = None

    def __post_init__(self) -> None:
        # As Session's: the full check only near a limit.
        if (len(self.source_text) > _SAFE_TEXT_CHARS
                or (self.target_text is not None and len(self.target_text) > _SAFE_TEXT_CHARS)
                or (self.context is not None and len(self.context) > _SAFE_TEXT_CHARS)
                or (self.error_message is not None and len(self.error_message) > _SAFE_TEXT_CHARS)
                or (self.start_time is not None and not 1 < self.start_time.year < 9999)
                or (self.end_time is not None and not 1 < self.end_time.year < 9999)
                or (self.updated_at is not None and not 1 < self.updated_at.year < 9999)):
            _refuse_unstorable(self)


# -- limits msgspec's annotations cannot say: checked on every decode --------

def text_problem(value: str | None) -> str | None:
    """msgspec limits characters; MySQL TEXT limits UTF-8 bytes."""
    if value is not None and len(value) > _SAFE_TEXT_CHARS and len(value.encode()) > MAX_TEXT_BYTES:
        return f"is longer than {MAX_TEXT_BYTES} bytes in UTF-8"
    return None


def time_problem(value: datetime | None) -> str | None:
    if value is None or 1 < value.year < 9999:  # an offset moves a time by less than a day
        return None
    if not MIN_TIME_US <= to_us(value) <= MAX_TIME_US:
        return "is outside 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999Z once converted to UTC"
    return None


def json_problem(value: Any) -> str | None:
    if value is not None and _depth_exceeds(value, MAX_JSON_DEPTH):
        return f"nests objects and arrays deeper than {MAX_JSON_DEPTH} levels"
    return None


def _depth_exceeds(value: Any, limit: int) -> bool:
    level = [value]
    for _ in range(limit):
        level = [child for v in level if isinstance(v, dict | list)
                 for child in (v.values() if isinstance(v, dict) else v)]
        if not level:
            return False
    return any(isinstance(v, dict | list) for v in level)


FIELD_CHECKS: dict[str, Callable[[Any], str | None]] = {
    **dict.fromkeys(("source_text", "target_text", "context", "error_message"), text_problem),
    **dict.fromkeys(("updated_at", "start_time", "end_time"), time_problem),
    **dict.fromkeys(("game_info", "metadata"), json_problem),
}


def _refuse_unstorable(record: Struct) -> None:
    # Runs for every record accepted: the cheap test of each kind of limit first.
    texts, times, documents = _CHECKED_FIELDS[type(record)]
    for name in texts:
        value = getattr(record, name)
        if value is not None and len(value) > _SAFE_TEXT_CHARS:
            _refuse(name, text_problem(value))
    for name in times:
        value = getattr(record, name)
        if value is not None and not 1 < value.year < 9999:
            _refuse(name, time_problem(value))
    for name in documents:
        value = getattr(record, name)
        if value:
            _refuse(name, json_problem(value))


def _refuse(name: str, problem: str | None) -> None:
    if problem:
        raise ValueError(f"`{name}` {problem}")


def _fields_checked_by(check: Callable[[Any], str | None], kind: type[Struct]) -> tuple[str, ...]:
    return tuple(name for name in kind.__struct_fields__ if FIELD_CHECKS.get(name) is check)


_CHECKED_FIELDS: dict[type[Struct], tuple[tuple[str, ...], ...]] = {
    kind: tuple(_fields_checked_by(check, kind) for check in (text_problem, time_problem, json_problem))
    for kind in (Session, Task)}


class Accepted(Struct):
    """202 to a batch: it is durably in the spool."""
    status: Literal["accepted"]
    count: int
    timestamp: IsoTime


class FieldProblem(Struct):
    field: str
    message: str


class FlushResult(Struct, omit_defaults=True):
    """POST /flush: 200 with status flushed; 503 with status error, detail and error_code."""
    status: Literal["flushed", "error"]
    sessions_written: int  # rows written to the database while the call waited
    tasks_written: int
    tasks_held: int  # orphan tasks set aside until their session is stored
    dead_lettered: int  # records moved to the dead letters
    duration_ms: float
    detail: str | None = None
    error_code: str | None = None
    errors: list[FieldProblem] | None = None


class SessionBatch(Struct):
    sessions: Annotated[list[Session], Meta(min_length=1, max_length=MAX_BATCH_ITEMS)]


class TaskBatch(Struct):
    tasks: Annotated[list[Task], Meta(min_length=1, max_length=MAX_BATCH_ITEMS)]


class DeleteSession(Struct):
    session_id: Text36


class SetSessionStatus(Struct):
    session_id: Text36
    status: SessionStatus


class CleanupCommand(Struct):
    """The spooled cleanup: days may be fractional (retention's config)."""
    completed_days: Annotated[float, Meta(ge=0)] = 90
    failed_days: Annotated[float, Meta(ge=0)] = 30
    dry_run: bool = False


Days = Annotated[int, Meta(ge=0, le=3_650_000)]  # 10,000 years: far past any stored time


class Cleanup(Struct):
    """POST /sessions/cleanup's body: whole days, as API.md says."""
    completed_days: Days = 90
    failed_days: Days = 30
    dry_run: bool = False


# What a command did: stored in the spool's command_results by the flusher,
# answered by the query process (not_found, superseded and failed as errors).
class Deleted(Struct, tag_field="status", tag="deleted"):
    session_id: str
    deleted_tasks: int


class StatusUpdated(Struct, tag_field="status", tag="updated"):
    session_id: str
    new_status: str


class CleanupResult(Struct, tag_field="status", tag="completed"):
    deleted_sessions: int
    deleted_tasks: int
    dry_run: bool


class AuditRetentionCommand(Struct):
    """Delete audit events that occurred more than `days` before the command
    was accepted, in the order they were stored (the hash chain's order)."""
    days: Annotated[float, Meta(ge=0)]


class AuditRetained(Struct, tag_field="status", tag="retained"):
    deleted_events: int


class CommandNotFound(Struct, tag_field="status", tag="not_found"):
    session_id: str


class Superseded(Struct, tag_field="status", tag="superseded"):
    session_id: str
    new_status: str
    current_status: str


class CommandFailed(Struct, tag_field="status", tag="failed"):
    error: str
    seq: int


CommandResult = (Deleted | StatusUpdated | CleanupResult | AuditRetained | CommandNotFound | Superseded
                 | CommandFailed)


# Spool entry kinds (stored as integers; append only, never renumber).
KIND_SESSIONS = 1
KIND_TASKS = 2
# Commands: applied by the flusher alone, in spool order, after every write before them.
KIND_DELETE_SESSION = 3
KIND_SET_SESSION_STATUS = 4
KIND_CLEANUP = 5
KIND_AUDIT_EVENTS = 6
KIND_AUDIT_RETENTION = 7  # a command: delete events past audit.retention_days, oldest stored first
COMMAND_TYPES: dict[int, type[Struct]] = {
    KIND_DELETE_SESSION: DeleteSession, KIND_SET_SESSION_STATUS: SetSessionStatus, KIND_CLEANUP: CleanupCommand,
    KIND_AUDIT_RETENTION: AuditRetentionCommand}

JSON_ENCODER = msgspec.json.Encoder()


class SpoolEntry(Struct, frozen=True):
    """One accepted request as read back from the spool."""
    seq: int
    kind: int
    received_at_us: int
    record_count: int
    payload: bytes
