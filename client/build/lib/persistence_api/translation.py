"""The records and answers of the translation API (API.md, Phase 1) as msgspec
Structs: the one definition the service validates requests and encodes
answers with, and the client encodes requests and decodes answers with.

Schema evolution (payloads are stored in the service's spool as the
request's JSON): new fields must have defaults; never rename or retype a
field. See the service's wal/FORMAT.md.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from msgspec import Meta, Struct

from persistence_api.times import to_us

T = TypeVar("T")

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
# A JSON document in an answer: the service sends the stored text on as it is
# (msgspec.Raw); a client decodes it into Python objects.
JsonDocument = Any
# Declared as format date-time in OpenAPI, so generated clients and fuzzers send times.
Time = Annotated[datetime, Meta(extra_json_schema={"format": "date-time"})]
# A time in an answer: ISO 8601 UTC with Z and microseconds (the service's core.times.iso_z).
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


# -- answers of the reads -----------------------------------------------------

class SessionSummary(Struct):
    session_id: str
    filename: str
    status: str
    total_tasks: int
    completed_tasks: int
    failed_tasks: int
    processing_tasks: int
    pending_tasks: int
    progress: float
    created_at: IsoTime
    updated_at: IsoTime


class SessionDetail(Struct):
    session_id: str
    filename: str
    file_path: str
    status: str
    llm_provider: str
    game_info: JsonDocument
    metadata: JsonDocument
    total_tasks: int
    completed_tasks: int
    failed_tasks: int
    processing_tasks: int
    pending_tasks: int
    progress: float
    created_at: IsoTime
    updated_at: IsoTime
    estimated_completion: IsoTime | None


class TaskView(Struct):
    task_id: str
    session_id: str
    batch_id: str
    sheet_name: str
    row_index: int
    column_name: str
    source_text: str
    target_text: str | None
    context: str | None
    status: str
    confidence: float | None
    error_message: str | None
    retry_count: int
    start_time: IsoTime | None
    end_time: IsoTime | None
    duration_ms: int | None
    created_at: IsoTime
    updated_at: IsoTime


class ListPage(Struct, Generic[T]):
    """A page of a list (sessions, tasks): the one definition, for encoding and for OpenAPI."""
    total: int
    page: int
    page_size: int
    total_pages: int
    items: list[T]
    next_cursor: str | None


class SessionTaskPage(Struct, Generic[T]):
    session_id: str
    total: int
    page: int
    page_size: int
    total_pages: int
    items: list[T]
    next_cursor: str | None



class SessionCounts(Struct):
    total: int
    pending: int
    processing: int
    completed: int
    failed: int
    cancelled: int


class TaskCounts(Struct):
    total: int
    pending: int
    processing: int
    completed: int
    failed: int


class Performance(Struct):
    average_session_time: float
    average_task_time: float
    success_rate: float


class Storage(Struct):
    database_size_mb: float
    sessions_table_rows: int
    tasks_table_rows: int


class Stats(Struct):
    sessions: SessionCounts
    tasks: TaskCounts
    performance: Performance
    storage: Storage
    computed_at: IsoTime  # when these figures were read (a copy up to query.stats_cache seconds old)


class RecoveryStatus(Struct):
    incomplete_sessions: int
    sessions_by_status: dict[str, int]
    open_tasks: int
    tasks_by_status: dict[str, int]
    checked_at: IsoTime



class IncompleteSessions(Struct):
    count: int
    sessions: list[SessionSummary]


class Restored(Struct):
    session_id: str
    session: SessionDetail
    tasks: list[TaskView]
    tasks_count: int
    restored_at: IsoTime


class Queued(Struct):
    """202: the command is in the spool; the database did not answer within flush_timeout."""
    status: Literal["queued"]
    session_id: str | None
    detail: str


class ErrorBody(Struct):
    """Every error answer. Some carry more keys: session_id, task_id, request_id (500)."""
    detail: str
    error_code: str
    errors: list[FieldProblem] = []
