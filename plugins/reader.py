"""The read side of the storage backends: a protocol separate from Sink, so a
write-only backend does not stub it.

Rows come back as tuples in the column order of core.records.SESSION_COLUMNS /
TASK_COLUMNS (the order the sinks take them in), with the same value types on
every backend: datetimes as UTC storage text 'YYYY-MM-DD HH:MM:SS.ffffff',
game_info/metadata as JSON text, confidence as float, counters as int.

Lists are keyset-paged: a page ends with the sort key of its last row, and
`PageRequest.after` continues strictly after that key, so a deep page costs
what the first one does. The SQL both backends share, and the reads they
run the same way, are in plugins/read_sql.py.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

from msgspec import Struct

from core.settings import SinkSettings
from plugins import SinkError

# Reader connections per process; the query app runs at most this many reads at once.
READ_CONNECTIONS = 4
OPEN_STATUSES = ("pending", "processing")
SESSION_ORDER_TIEBREAK = "session_id"
TASK_LAYOUT_ORDER = ("sheet_name", "row_index", "column_name", "task_id")
TASK_NEWEST_ORDER = ("created_at", "task_id")

# Statements with no parameters, the same on both backends. The GROUP BYs read
# only the (status, created_at) indexes; AVG(duration_ms) reads the whole table.
SESSION_STATUS_COUNTS = "SELECT status, COUNT(*) FROM translation_sessions GROUP BY status"
TASK_STATUS_COUNTS = "SELECT status, COUNT(*) FROM translation_tasks GROUP BY status"
AVERAGE_TASK_MS = "SELECT AVG(duration_ms) FROM translation_tasks WHERE duration_ms IS NOT NULL"
_OPEN = "('pending', 'processing')"
RECOVERY_SESSIONS = (f"SELECT status, COUNT(*) FROM translation_sessions WHERE status IN {_OPEN}"
                     " GROUP BY status")
# CROSS JOIN: SQLite then drives from the (few) incomplete sessions; MySQL reads it as JOIN.
RECOVERY_TASKS = ("SELECT t.status, COUNT(*) FROM translation_sessions s"
                  " CROSS JOIN translation_tasks t ON t.session_id = s.session_id"
                  f" WHERE s.status IN {_OPEN} AND t.status IN {_OPEN} GROUP BY t.status")

Key = tuple[str | int, ...]
C = TypeVar("C")


class ReadError(SinkError):
    """The database could not answer now (unreachable, timed out, schema not
    created yet). Nothing was changed; the caller may retry."""


class SessionFilter(Struct, frozen=True):
    statuses: tuple[str, ...] = ()
    created_from: str | None = None  # created_at >= this (storage text)
    created_before: str | None = None  # created_at < this (storage text)
    sort_by: Literal["created_at", "updated_at"] = "created_at"
    descending: bool = True

    @property
    def order(self) -> tuple[str, str]:
        return (self.sort_by, SESSION_ORDER_TIEBREAK)


class TaskFilter(Struct, frozen=True):
    session_id: str | None = None
    status: str | None = None
    sheet_name: str | None = None
    created_from: str | None = None
    created_before: str | None = None
    # layout: sheet_name, row_index, column_name ascending (a session's tasks);
    # newest: created_at descending (the global task list).
    by_layout: bool = False

    @property
    def order(self) -> tuple[str, ...]:
        return TASK_LAYOUT_ORDER if self.by_layout else TASK_NEWEST_ORDER

    @property
    def descending(self) -> bool:
        return not self.by_layout


class PageRequest(Struct, frozen=True):
    limit: int
    offset: int = 0  # used only when after is None
    after: Key | None = None  # continue strictly after this sort key


class Page(Struct):
    rows: list[tuple]
    has_more: bool
    last_key: Key | None  # sort key of the last row; opaque outside the reader that made it


class StoreStats(Struct):
    sessions_by_status: dict[str, int]
    tasks_by_status: dict[str, int]
    average_session_s: float | None  # completed sessions: mean of updated_at - created_at
    average_task_ms: float | None  # mean duration_ms over tasks that carry one
    database_bytes: int


class RecoveryCounts(Struct):
    sessions_by_status: dict[str, int]  # incomplete sessions (pending, processing)
    open_tasks_by_status: dict[str, int]  # their pending and processing tasks


class Reader(Protocol):
    def ensure_indexes(self) -> None:
        """Create the indexes the reads need when missing; safe to repeat.
        Needs the sink's tables (Sink.migrate) to exist."""

    def session(self, session_id: str) -> tuple | None: ...

    def task(self, task_id: str) -> tuple | None: ...

    def sessions(self, flt: SessionFilter, page: PageRequest) -> Page:
        """Sessions matching flt in flt.order, at most page.limit rows."""

    def count_sessions(self, flt: SessionFilter) -> int: ...

    def tasks(self, flt: TaskFilter, page: PageRequest) -> Page:
        """Tasks matching flt in flt.order, at most page.limit rows."""

    def count_tasks(self, flt: TaskFilter) -> int: ...

    def open_tasks(self, session_id: str, after: Key | None, limit: int) -> Page:
        """The next chunk (at most limit rows, maybe none) of the session's
        pending and processing tasks, in an order that is stable while they
        are written; pass last_key back until has_more is False."""

    def recovery_counts(self) -> RecoveryCounts: ...

    def stats(self) -> StoreStats: ...

    def close(self) -> None: ...


def open_reader(settings: SinkSettings) -> Reader:
    """The reader for settings.url (sqlite:///path or mysql://user:pass@host:port/db)."""
    scheme = urlsplit(settings.url).scheme
    if scheme == "sqlite":
        from plugins.sqlite_reader import SqliteReader
        return SqliteReader(settings)
    if scheme == "mysql":
        from plugins.mysql_reader import MysqlReader
        return MysqlReader(settings)
    raise ValueError(f"no reader for scheme {scheme!r}")


class ConnectionPool(Generic[C]):
    """At most `size` connections, opened on demand. A connection whose use
    raised is closed rather than reused: it may be dead or mid-result."""

    def __init__(self, connect: Callable[[], C], close: Callable[[C], None], size: int) -> None:
        self._connect = connect
        self._close = close
        self._slots = threading.BoundedSemaphore(size)
        self._idle: queue.SimpleQueue[C] = queue.SimpleQueue()

    @contextlib.contextmanager
    def connection(self) -> Iterator[C]:
        self._slots.acquire()
        try:
            conn = self._take()
        except BaseException:
            self._slots.release()
            raise
        try:
            yield conn
        except BaseException:
            self._discard(conn)
            self._slots.release()
            raise
        self._idle.put(conn)  # back in the queue before the slot frees: never more than size
        self._slots.release()

    def _take(self) -> C:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self._connect()

    def _discard(self, conn: C) -> None:
        with contextlib.suppress(Exception):  # closing a broken connection may fail too
            self._close(conn)

    def close(self) -> None:
        while True:
            try:
                self._discard(self._idle.get_nowait())
            except queue.Empty:
                return
