"""The service's own records: the spooled commands, what a command did, and
the spool's entry kinds. The wire types of API.md (Session, Task, their
batches and answers) live in persistence_api, shared with the client."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from persistence_api.translation import CleanupResult, Deleted, SessionStatus, StatusUpdated, Text36


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
