"""Wire types: the records of API.md as msgspec Structs, the single definition
used to validate requests and to decode spooled payloads.

Schema evolution (payloads are stored in the spool as the request's JSON):
new fields must have defaults; never rename or retype a field. See
wal/FORMAT.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from core.times import db_text, to_us

MAX_BATCH_ITEMS = 1000
MAX_TEXT_BYTES = 65_535
# A string of at most this many characters cannot exceed MAX_TEXT_BYTES in UTF-8.
_SAFE_TEXT_CHARS = MAX_TEXT_BYTES // 4

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
    updated_at: datetime | None = None


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
    start_time: datetime | None = None
    end_time: datetime | None = None
    duration_ms: Count | None = None
    updated_at: datetime | None = None

    def __post_init__(self) -> None:
        # msgspec limits characters; MySQL TEXT limits UTF-8 bytes.
        for name in ("source_text", "target_text", "context", "error_message"):
            value = getattr(self, name)
            if value is not None and len(value) > _SAFE_TEXT_CHARS and len(value.encode()) > MAX_TEXT_BYTES:
                raise ValueError(f"`{name}` is longer than {MAX_TEXT_BYTES} bytes in UTF-8")


class SessionBatch(Struct):
    sessions: Annotated[list[Session], Meta(min_length=1, max_length=MAX_BATCH_ITEMS)]


class TaskBatch(Struct):
    tasks: Annotated[list[Task], Meta(min_length=1, max_length=MAX_BATCH_ITEMS)]


class DeleteSession(Struct):
    session_id: Text36


class SetSessionStatus(Struct):
    session_id: Text36
    status: SessionStatus


class Cleanup(Struct):
    completed_days: Annotated[float, Meta(ge=0)] = 90
    failed_days: Annotated[float, Meta(ge=0)] = 30
    dry_run: bool = False


# Spool entry kinds (stored as integers; append only, never renumber).
KIND_SESSIONS = 1
KIND_TASKS = 2
# Commands: applied by the flusher alone, in spool order, after every write before them.
KIND_DELETE_SESSION = 3
KIND_SET_SESSION_STATUS = 4
KIND_CLEANUP = 5
COMMAND_TYPES: dict[int, type[Struct]] = {
    KIND_DELETE_SESSION: DeleteSession, KIND_SET_SESSION_STATUS: SetSessionStatus, KIND_CLEANUP: Cleanup}

SESSION_DECODER = msgspec.json.Decoder(SessionBatch)
TASK_DECODER = msgspec.json.Decoder(TaskBatch)
JSON_ENCODER = msgspec.json.Encoder()


class SpoolEntry(Struct, frozen=True):
    """One accepted request as read back from the spool."""
    seq: int
    kind: int
    received_at_us: int
    record_count: int
    payload: bytes


# Sink column order. Both sinks take rows as tuples in exactly this order.
SESSION_COLUMNS = (
    "session_id", "filename", "file_path", "status", "llm_provider", "game_info", "metadata",
    "total_tasks", "completed_tasks", "failed_tasks", "processing_tasks", "created_at", "updated_at",
)
TASK_COLUMNS = (
    "task_id", "session_id", "batch_id", "sheet_name", "row_index", "column_name", "source_text",
    "target_text", "context", "status", "confidence", "error_message", "retry_count",
    "start_time", "end_time", "duration_ms", "created_at", "updated_at",
)


def version_us(record: Session | Task, received_at_us: int) -> int:
    """A record's version: its updated_at when the client sent one, else when
    the service accepted it."""
    return to_us(record.updated_at) if record.updated_at is not None else received_at_us


def _json_or_none(value: JsonObject | None) -> str | None:
    return None if value is None else JSON_ENCODER.encode(value).decode()


def _time_or_none(value: datetime | None) -> str | None:
    return None if value is None else db_text(to_us(value))


def session_row(s: Session, version: int, received_at_us: int) -> tuple:
    return (s.session_id, s.filename, s.file_path, s.status, s.llm_provider,
            _json_or_none(s.game_info), _json_or_none(s.metadata), s.total_tasks,
            s.completed_tasks, s.failed_tasks, s.processing_tasks,
            db_text(received_at_us), db_text(version))


def task_row(t: Task, version: int, received_at_us: int) -> tuple:
    confidence = None if t.confidence is None else round(t.confidence, 4)
    return (t.task_id, t.session_id, t.batch_id, t.sheet_name, t.row_index, t.column_name,
            t.source_text, t.target_text, t.context, t.status, confidence, t.error_message,
            t.retry_count, _time_or_none(t.start_time), _time_or_none(t.end_time), t.duration_ms,
            db_text(received_at_us), db_text(version))
