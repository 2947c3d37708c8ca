"""Storage backends behind one small interface.

A Sink writes coalesced batches: per table (plugins/tables.py, a record
kind's table contract), rows as tuples in its column order, sorted by key. Each
backend converts its driver's errors into exactly two types: TransientSinkError
(the flusher retries, in order) and RejectedRows (the rows are refused for
good; the flusher isolates and dead-letters them). The flusher never imports a
driver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from core.settings import SinkSettings

if TYPE_CHECKING:
    from plugins.tables import Table, TableRows


class SinkError(Exception):
    """Base class of sink errors."""


class TransientSinkError(SinkError):
    """The database could not be reached or asked us to retry (connection
    lost, deadlock, lock wait timeout). Nothing of the batch was committed."""


class Conflict(TransientSinkError):
    """A deadlock, or a Galera certification conflict: another transaction won; retrying at once is right."""


class RejectedRows(SinkError):
    """The database refused the batch for good (bad value, constraint).
    Nothing of the batch was committed. `reason` is the database's own text,
    which may quote the refused values: it goes to the dead-letter table only.
    `code` names the error without them, for logs."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


# Called inside the retention transaction with the events about to be deleted, before the delete:
# (execute(sql with %s marks, *args) in that transaction, column names, rows). It archives them.
ArchiveChunk = Callable[[Callable[..., Any], Sequence[str], list[tuple]], None]


class StatusChange(NamedTuple):
    applied: bool  # False: the stored record's version is newer than the change
    status: str  # the status stored now


class Sink(Protocol):
    parallel_writes: bool  # several connections may write at once (flush.writers); False: one writer

    def migrate(self) -> None:
        """Create the database objects when missing; safe to run repeatedly and concurrently."""

    def write(self, batch: Sequence[TableRows]) -> set[str]:
        """Upsert every table's rows, in the order given (parents first), in one
        transaction. Per key the row with the highest updated_at (the version)
        wins, whatever the order batches arrive in; created_at keeps the
        earliest. Replaying a batch is harmless. Rows whose acceptance time is
        given and is not after their session's delete are left out; returns the
        sessions of the batch that have such a delete."""

    def delete_session(self, session_id: str, deleted_at_us: int | None = None) -> int | None:
        """Delete a session and all its tasks; the number of tasks deleted, or
        None when the session is not stored. Safe to replay. With deleted_at_us
        (when the delete was accepted), its tombstone is kept in the same
        transaction: writes accepted before then are left out from now on (see write)."""

    def set_session_status(self, session_id: str, status: str, version: str) -> StatusChange | None:
        """Set only the status, unless the stored record has a newer version;
        None when the session is not stored."""

    def cleanup(self, completed_before: str, failed_before: str, dry_run: bool) -> tuple[int, int]:
        """Delete completed sessions updated before completed_before and failed
        ones updated before failed_before, with their tasks, in bounded
        transactions; (sessions, tasks) deleted, or that would be with dry_run."""

    def retain_audit_events(self, before: str, archive: ArchiveChunk | None = None) -> int:
        """Delete audit events that occurred before `before` (storage text),
        oldest stored first, stopping at the first younger one (the chain
        keeps its start), in bounded transactions; how many were deleted.
        With `archive`, each chunk is handed to it first, in its transaction."""

    def existing(self, table: Table, keys: Iterable[str]) -> set[str]:
        """The subset of keys that are stored in table."""

    def ping(self) -> bool:
        """True when the database answers now."""

    def close(self) -> None: ...


def open_sink(settings: SinkSettings) -> Sink:
    """The sink named by settings.url (sqlite:///path or mysql://user:pass@host:port/db)."""
    scheme = urlsplit(settings.url).scheme
    if scheme == "sqlite":
        from plugins.sqlite import SqliteSink
        return SqliteSink.connect(settings)
    if scheme == "mysql":
        from plugins.mysql import MysqlSink
        return MysqlSink.connect(settings)
    raise ValueError(f"no sink for scheme {scheme!r}")
