"""Commands that travel through the spool (delete a session, set its status,
clean up old sessions, delete old audit events, archive finished sessions and restore one). The flusher applies each one alone, after every write
acknowledged before it and before every write after it, so a write still in
the spool can never resurrect a deleted session."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from msgspec import Struct

from core.records import COMMAND_TYPES, JSON_ENCODER, ArchiveCommand, ArchiveRestoreCommand, AuditRetained, AuditRetentionCommand, CleanupCommand, CommandFailed, CommandNotFound, CommandResult, DeleteSession, SetSessionStatus, SpoolEntry, Superseded
from persistence_api.translation import MIN_TIME_US, CleanupResult, Deleted, StatusUpdated
from core.times import db_text
from plugins import Sink

if TYPE_CHECKING:
    from archive.runner import Archiver

DAY_US = 86_400_000_000


class Applied(Struct):
    result: CommandResult
    deleted_session: str | None = None


def apply_command(entry: SpoolEntry, sink: Sink, archiver: Archiver | None) -> Applied:
    """Apply one command entry; its version is the time it was accepted."""
    command = msgspec.json.decode(entry.payload, type=COMMAND_TYPES[entry.kind])
    if isinstance(command, ArchiveCommand | ArchiveRestoreCommand) and archiver is None:
        raise RuntimeError("this flusher was started without an archiver")
    if isinstance(command, ArchiveCommand):
        assert archiver is not None
        return Applied(archiver.archive(command.days, command.max_tasks, entry.seq, entry.received_at_us))
    if isinstance(command, ArchiveRestoreCommand):
        assert archiver is not None
        return Applied(archiver.restore(command.session_id, sink, entry.received_at_us))
    if isinstance(command, DeleteSession):
        deleted = sink.delete_session(command.session_id, entry.received_at_us)
        if deleted is None:
            return Applied(CommandNotFound(command.session_id))
        return Applied(Deleted(command.session_id, deleted), deleted_session=command.session_id)
    if isinstance(command, SetSessionStatus):
        change = sink.set_session_status(command.session_id, command.status, db_text(entry.received_at_us))
        if change is None:
            return Applied(CommandNotFound(command.session_id))
        if not change.applied:  # a write with a newer version reached the database first
            return Applied(Superseded(command.session_id, command.status, change.status))
        return Applied(StatusUpdated(command.session_id, command.status))
    if isinstance(command, AuditRetentionCommand):
        archive = None
        if command.archive and archiver is not None:  # archived in each chunk's transaction, before its delete
            archiver.prepare()
            archive = archiver.audit_chunk
        deleted = sink.retain_audit_events(_before(entry.received_at_us, command.days), archive)
        return Applied(AuditRetained(deleted, deleted if archive else 0))
    assert isinstance(command, CleanupCommand)
    return Applied(cleanup(sink, command, entry.received_at_us))


def _before(now_us: int, days: float) -> str:
    """The time `days` before now_us; more days than there have been since year 1: everything is older."""
    return db_text(max(now_us - int(days * DAY_US), MIN_TIME_US))


def cleanup(sink: Sink, command: CleanupCommand, now_us: int) -> CleanupResult:
    sessions, tasks = sink.cleanup(_before(now_us, command.completed_days), _before(now_us, command.failed_days),
                                   command.dry_run)
    return CleanupResult(sessions, tasks, command.dry_run)


def failed(entry: SpoolEntry, error: str) -> Applied:
    """The result of a command the database refused for good (it is dead-lettered)."""
    return Applied(CommandFailed(error, entry.seq))


def encode_result(applied: Applied) -> bytes:
    return JSON_ENCODER.encode(applied.result)
