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
    archive: bool = False  # archive.after_days > 0: each chunk is archived before it is deleted


class ArchiveCommand(Struct):
    """Move sessions completed or failed (not updated) more than `days`
    before the command was accepted, with their tasks, to archive objects,
    then delete them from the hot tables; at most `max_tasks` tasks per command."""
    days: Annotated[float, Meta(ge=0, le=3_650_000)]
    max_tasks: Annotated[int, Meta(ge=1)] = 50_000


class ArchiveRestoreCommand(Struct):
    """Write an archived session and its tasks back into the hot tables (versions decide, as for any write)."""
    session_id: Text36


class AuditRetained(Struct, tag_field="status", tag="retained"):
    deleted_events: int
    archived_events: int = 0


class Archived(Struct, tag_field="status", tag="archived"):
    sessions: int
    tasks: int
    objects: int
    archived_bytes: int
    more: bool  # more sessions are due: the next run continues


class ArchiveRestored(Struct, tag_field="status", tag="restored"):
    session_id: str
    tasks: int


class CommandNotFound(Struct, tag_field="status", tag="not_found"):
    session_id: str


class Superseded(Struct, tag_field="status", tag="superseded"):
    session_id: str
    new_status: str
    current_status: str


class CommandFailed(Struct, tag_field="status", tag="failed"):
    error: str
    seq: int


CommandResult = (Deleted | StatusUpdated | CleanupResult | AuditRetained | Archived | ArchiveRestored
                 | CommandNotFound | Superseded | CommandFailed)


# Spool entry kinds (stored as integers; append only, never renumber).
KIND_SESSIONS = 1
KIND_TASKS = 2
# Commands: applied by the flusher alone, in spool order, after every write before them.
KIND_DELETE_SESSION = 3
KIND_SET_SESSION_STATUS = 4
KIND_CLEANUP = 5
KIND_AUDIT_EVENTS = 6
KIND_AUDIT_RETENTION = 7  # a command: delete events past audit.retention_days, oldest stored first
KIND_ARCHIVE = 8  # a command: move finished sessions to the archive, then delete them
KIND_ARCHIVE_RESTORE = 9  # a command: write an archived session back
COMMAND_TYPES: dict[int, type[Struct]] = {
    KIND_DELETE_SESSION: DeleteSession, KIND_SET_SESSION_STATUS: SetSessionStatus, KIND_CLEANUP: CleanupCommand,
    KIND_AUDIT_RETENTION: AuditRetentionCommand, KIND_ARCHIVE: ArchiveCommand,
    KIND_ARCHIVE_RESTORE: ArchiveRestoreCommand}

JSON_ENCODER = msgspec.json.Encoder()


class SpoolEntry(Struct, frozen=True):
    """One accepted request as read back from the spool."""
    seq: int
    kind: int
    received_at_us: int
    record_count: int
    payload: bytes
