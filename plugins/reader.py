"""The read side of the storage backends: a protocol separate from Sink, so a
write-only backend does not stub it.

Rows come back as tuples in the column order of core.records.SESSION_COLUMNS /
TASK_COLUMNS (the order the sinks take them in), with the same value types on
every backend: datetimes as UTC storage text 'YYYY-MM-DD HH:MM:SS.ffffff',
game_info/metadata as JSON text, confidence as float, counters as int.

Lists are keyset-paged: a page ends with the sort key of its last row, and
`PageRequest.after` continues strictly after that key, so a deep page costs
what the first one does. The SQL shared by both backends is built here by
`ReadSql`; each backend only supplies its placeholder and its own statements
(statistics, index creation, the restore walk).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

from msgspec import Struct

from core.records import SESSION_COLUMNS, TASK_COLUMNS
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


def _after(columns: Sequence[str], descending: bool, ph: str, row_values: bool) -> str:
    """(c1, ..., cn) > (v1, ..., vn), in the form each planner turns into one
    index range that starts at the key (not at the start of its c1 group):
    SQLite takes row values; MariaDB takes the expanded AND/OR form."""
    op = "<" if descending else ">"
    if row_values:
        head = ", ".join(columns[:-1]) or columns[0]
        marks = ", ".join([ph] * max(1, len(columns) - 1))
        return f"({head}) {op}= ({marks}) AND ({', '.join(columns)}) {op} ({', '.join([ph] * len(columns))})"

    def strictly(cols: Sequence[str]) -> str:
        if len(cols) == 1:
            return f"{cols[0]} {op} {ph}"
        return f"({cols[0]} {op} {ph} OR ({cols[0]} = {ph} AND {strictly(cols[1:])}))"

    return f"{columns[0]} {op}= {ph} AND {strictly(columns)}"


def _after_params(key: Key, row_values: bool) -> list[str | int]:
    if row_values:
        return [*(key[:-1] or key[:1]), *key]
    params: list[str | int] = [key[0]]
    for value in key[:-1]:
        params += [value, value]
    return [*params, key[-1]]


class Table(Struct, frozen=True):
    name: str
    key: str
    columns: tuple[str, ...]
    json_columns: tuple[str, ...] = ()  # stored JSON: read back as its text

    def select_list(self, prefix: str = "", as_json: bool = False) -> str:
        """The columns to select; as_json: one JSON array per row instead, with
        stored JSON as text (JSON_ARRAY would embed it as a value)."""
        if not as_json:
            return ", ".join(prefix + c for c in self.columns)
        listed = ", ".join(f"CAST({prefix}{c} AS CHAR CHARACTER SET utf8mb4)" if c in self.json_columns
                           else prefix + c for c in self.columns)
        return f"JSON_ARRAY({listed})"


SESSIONS = Table("translation_sessions", "session_id", SESSION_COLUMNS, json_columns=("game_info", "metadata"))
TASKS = Table("translation_tasks", "task_id", TASK_COLUMNS)


class ReadSql:
    """Builds the statements both backends share; `ph` is the driver's placeholder.

    With deferred_join, an OFFSET page first selects only primary keys (read
    from the index alone) and then joins the rows, so the skipped rows are
    never read whole (page 50 of 20 sessions: 0.9 ms instead of 3 ms). First
    pages and keyset pages read their rows directly: on MariaDB 10.11 the
    join only added a temporary table (0.35 ms against 0.7 ms a page,
    measured on 1M tasks for every filter and sort of the lists).

    With json_rows, a row comes back as one JSON array (`JSON_ARRAY(...)`,
    decoded by the reader): pymysql then parses one column per row instead of
    13 or 18, which halved the CPU of a 50-task page."""

    def __init__(self, ph: str, row_values: bool = False, deferred_join: bool = False,
                 json_rows: bool = False) -> None:
        self.ph = ph
        self.row_values = row_values
        self.deferred_join = deferred_join
        self.json_rows = json_rows
        self.session_by_id = (f"SELECT {SESSIONS.select_list(as_json=json_rows)} FROM {SESSIONS.name}"
                              f" WHERE session_id = {ph}")
        self.task_by_id = f"SELECT {TASKS.select_list(as_json=json_rows)} FROM {TASKS.name} WHERE task_id = {ph}"

    def sessions(self, flt: SessionFilter, page: PageRequest) -> tuple[str, list]:
        where, params = self._session_where(flt)
        return self._page(SESSIONS, where, params, flt.order, flt.descending, page)

    def count_sessions(self, flt: SessionFilter) -> tuple[str, list]:
        where, params = self._session_where(flt)
        return f"SELECT COUNT(*) FROM translation_sessions{_where(where)}", params

    def tasks(self, flt: TaskFilter, page: PageRequest) -> tuple[str, list]:
        where, params = self._task_where(flt)
        return self._page(TASKS, where, params, flt.order, flt.descending, page)

    def count_tasks(self, flt: TaskFilter) -> tuple[str, list]:
        where, params = self._task_where(flt)
        return f"SELECT COUNT(*) FROM translation_tasks{_where(where)}", params

    def open_tasks(self, session_id: str, status: str, after: str | int | None, limit: int,
                   tiebreak: str, extra: str = "") -> tuple[str, list]:
        """One open status at a time, by tiebreak: an index range on
        (session_id, status, tiebreak) with no sort. `extra` is appended to
        the selected columns (SQLite: ", rowid")."""
        where, params = [f"session_id = {self.ph}", f"status = {self.ph}"], [session_id, status]
        key = None if after is None else (after,)
        return self._page(TASKS, where, params, (tiebreak,), False, PageRequest(limit=limit, after=key), extra)

    def _session_where(self, flt: SessionFilter) -> tuple[list[str], list]:
        where, params = self._created(flt.created_from, flt.created_before)
        if flt.statuses:
            where.append(f"status IN ({', '.join([self.ph] * len(flt.statuses))})")
            params += flt.statuses
        return where, params

    def _task_where(self, flt: TaskFilter) -> tuple[list[str], list]:
        where, params = self._created(flt.created_from, flt.created_before)
        for column in ("session_id", "status", "sheet_name"):
            value = getattr(flt, column)
            if value is not None:
                where.append(f"{column} = {self.ph}")
                params.append(value)
        return where, params

    def _created(self, start: str | None, end: str | None) -> tuple[list[str], list]:
        where, params = [], []
        if start is not None:
            where.append(f"created_at >= {self.ph}")
            params.append(start)
        if end is not None:
            where.append(f"created_at < {self.ph}")
            params.append(end)
        return where, params

    def _page(self, table: Table, where: list[str], params: list, order: Sequence[str],
              descending: bool, page: PageRequest, extra: str = "") -> tuple[str, list]:
        where, params = list(where), list(params)
        if page.after is not None:
            where.append(_after(order, descending, self.ph, self.row_values))
            params += _after_params(page.after, self.row_values)
        params.append(page.limit + 1)  # one more tells whether another page follows
        tail = f" LIMIT {self.ph}"
        if page.after is None and page.offset:
            tail += f" OFFSET {self.ph}"
            params.append(page.offset)
        if not (self.deferred_join and page.after is None and page.offset):
            select = f"SELECT {table.select_list(as_json=self.json_rows)}{extra} FROM {table.name}"
            return f"{select}{_where(where)}{_order_by(order, descending)}{tail}", params
        keys = (f"SELECT {table.key} FROM {table.name}{_where(where)}"
                f"{_order_by(order, descending)}{tail}")
        columns = table.select_list("t.", self.json_rows) + extra
        return (f"SELECT {columns} FROM ({keys}) k JOIN {table.name} t ON t.{table.key} = k.{table.key}"
                f"{_order_by(order, descending, 't.')}"), params


def _order_by(order: Sequence[str], descending: bool, prefix: str = "") -> str:
    direction = " DESC" if descending else ""
    return f" ORDER BY {', '.join(prefix + c + direction for c in order)}"


def _where(conditions: list[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def make_page(rows: list[tuple], limit: int, key_of: Callable[[tuple], Key]) -> Page:
    """A Page from up to limit + 1 fetched rows."""
    has_more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows=rows, has_more=has_more, last_key=key_of(rows[-1]) if rows else None)


def open_walk_start(after: Key | None) -> tuple[str, str | int | None]:
    """(status, last tiebreak seen in it) from a restore walk's last_key."""
    if not after:
        return OPEN_STATUSES[0], None
    return str(after[0]), after[1] if len(after) > 1 else None


def open_walk_page(page: Page, status: str) -> Page:
    """The restore walk goes through OPEN_STATUSES in turn: when one status is
    done, the page says so and where the next status starts."""
    if page.has_more or status == OPEN_STATUSES[-1]:
        return page
    next_status = OPEN_STATUSES[OPEN_STATUSES.index(status) + 1]
    return Page(rows=page.rows, has_more=True, last_key=(next_status,))


def key_getter(columns: Sequence[str], order: Sequence[str]) -> Callable[[tuple], Key]:
    positions = [columns.index(c) for c in order]
    return lambda row: tuple(row[i] for i in positions)
