"""Record kinds, each declared once: its wire Struct, the batch it arrives
in, its key, where its version comes from, how the flusher treats it, and
its spool entry kind. Ingest, the spool, the flusher and the dead letters
work from these declarations; the table a kind is stored in is its contract
in plugins/tables.py. Adding a kind adds a declaration here and a table
there; it edits no route, drain loop or regex table.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from msgspec import Struct

from persistence_api.audit import AuditEvent, AuditEventBatch, complete
from core.records import KIND_AUDIT_EVENTS, KIND_SESSIONS, KIND_TASKS
from persistence_api.translation import Session, SessionBatch, Task, TaskBatch
from core.times import to_us


@dataclass(frozen=True, eq=False)
class RecordKind:
    name: str  # "session": metrics labels, dead-letter listings
    entry_kind: int  # the spool's `kind` column (append only, never renumbered)
    record: type[Struct]  # the wire type of one record
    batch: type[Struct]  # the POST body: {batch_field: [record, ...]}
    batch_field: str
    key_field: str  # the record's primary key
    path: str  # POST path of its batches
    # "upsert": per key the highest version wins (updated_at when sent, else the
    # acceptance time). "append": stored once per key, never changed (idempotency key):
    # of two writes of one key the first in spool order is kept.
    write: Literal["upsert", "append"] = "upsert"
    # What ingest fills in before spooling (an append kind's missing keys): the
    # answer then lists every record's key, in batch order.
    complete: Callable[[Sequence[Any], int], None] | None = None
    # A record naming a parent (a task its session) is held until the parent is stored.
    parent_field: str | None = None
    parent_kind: str | None = None
    decoder: msgspec.json.Decoder[Any] = field(init=False, repr=False)
    record_decoder: msgspec.json.Decoder[Any] = field(init=False, repr=False)
    key_of: Callable[[Any], str] = field(init=False, repr=False)  # attrgetter: the drain calls it per record
    parent_of: Callable[[Any], str] = field(init=False, repr=False)  # only for a kind with a parent

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder", msgspec.json.Decoder(self.batch))
        object.__setattr__(self, "record_decoder", msgspec.json.Decoder(self.record))
        object.__setattr__(self, "key_of", operator.attrgetter(self.key_field))
        if self.parent_field:
            object.__setattr__(self, "parent_of", operator.attrgetter(self.parent_field))

    def decode(self, payload: bytes) -> Sequence[Any]:
        """The records of a spooled (or posted) batch; raises msgspec errors."""
        return getattr(self.decoder.decode(payload), self.batch_field)

    def decode_record(self, payload: bytes) -> Any:
        return self.record_decoder.decode(payload)

    def encode_batch(self, records: Sequence[Any]) -> bytes:
        return msgspec.json.encode(self.batch(records))  # type: ignore[call-arg]

    def key(self, record: Any) -> str:
        return self.key_of(record)

    def parent(self, record: Any) -> str:
        return self.parent_of(record)

    def version(self, record: Any, received_at_us: int) -> int:
        """A record's version: its updated_at when the client sent one, else
        when the service accepted it."""
        updated_at = getattr(record, "updated_at", None)
        return to_us(updated_at) if updated_at is not None else received_at_us


SESSIONS = RecordKind("session", KIND_SESSIONS, Session, SessionBatch, "sessions", "session_id",
                      "/api/v1/translation/sessions/batch")
TASKS = RecordKind("task", KIND_TASKS, Task, TaskBatch, "tasks", "task_id", "/api/v1/translation/tasks/batch",
                   parent_field="session_id", parent_kind="session")
AUDIT_EVENTS = RecordKind("audit_event", KIND_AUDIT_EVENTS, AuditEvent, AuditEventBatch, "events", "event_id",
                          "/api/v1/audit/events/batch", write="append", complete=complete)

# Every kind, in the order a drain writes them (a parent before its children).
KINDS: tuple[RecordKind, ...] = (SESSIONS, TASKS, AUDIT_EVENTS)
BY_ENTRY_KIND: dict[int, RecordKind] = {kind.entry_kind: kind for kind in KINDS}
BY_NAME: dict[str, RecordKind] = {kind.name: kind for kind in KINDS}
