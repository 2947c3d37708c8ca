"""SQLite reader: a few connections to the sink's file, read-only by pragma.
The sink runs in WAL mode, so reads never block the flusher nor wait for it,
and each statement reads one committed snapshot."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from core.settings import SinkSettings
from plugins.tables import TABLES
from plugins.read_sql import ReadSql, SqlReader, make_page, open_walk_page, open_walk_start
from plugins.reader import (
    AVERAGE_TASK_MS,
    READ_CONNECTIONS,
    RECOVERY_SESSIONS,
    RECOVERY_TASKS,
    SESSION_STATUS_COUNTS,
    TASK_STATUS_COUNTS,
    ConnectionPool,
    Key,
    Page,
    ReadError,
    RecoveryCounts,
    StoreStats,
)

T = TypeVar("T")

# The tables' read indexes (plugins/tables.py): the sink's cover most reads, these
# serve the rest without a sort or scan. On SQLite they end with the key, as
# InnoDB's do implicitly: the tasks of one request share created_at.
INDEXES = "".join(f"CREATE INDEX IF NOT EXISTS {index.name} ON {table.name} ({index.sqlite_columns});\n"
                  for table in TABLES for index in table.read_indexes)
AVERAGE_SESSION_S = ("SELECT AVG((julianday(updated_at) - julianday(created_at)) * 86400.0)"
                     " FROM translation_sessions WHERE status = 'completed'")


class SqliteReader(SqlReader):
    def __init__(self, settings: SinkSettings) -> None:
        self._path = settings.url[len("sqlite:///"):]  # settings made it absolute
        self._timeout_s = settings.connect_timeout
        self._sql = ReadSql("?", row_values=True)
        self._pool: ConnectionPool[sqlite3.Connection] = ConnectionPool(
            self._connect, sqlite3.Connection.close, READ_CONNECTIONS)

    def _connect(self, read_only: bool = True) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=self._timeout_s, isolation_level=None,
                               check_same_thread=False)
        if read_only:
            conn.execute("PRAGMA query_only = ON")
        return conn

    def ensure_indexes(self) -> None:
        """Create the read indexes when missing (takes the write lock briefly)."""
        try:
            conn = self._connect(read_only=False)
            try:
                conn.executescript(INDEXES)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise ReadError(f"sqlite: {exc}") from exc

    def open_tasks(self, session_id: str, after: Key | None, limit: int) -> Page:
        # By rowid: the (session_id, status) index ends with it, so a chunk is one range, no sort.
        status, last = open_walk_start(after)
        sql, params = self._sql.open_tasks(session_id, status, last, limit, "rowid", ", rowid")
        page = make_page(self._fetch(sql, params), limit, lambda row: (status, row[-1]))
        page.rows = [row[:-1] for row in page.rows]
        return open_walk_page(page, status)

    def recovery_counts(self) -> RecoveryCounts:
        return self._with_connection(lambda conn: RecoveryCounts(
            sessions_by_status=dict(conn.execute(RECOVERY_SESSIONS).fetchall()),
            open_tasks_by_status=dict(conn.execute(RECOVERY_TASKS).fetchall())))

    def stats(self) -> StoreStats:
        return self._with_connection(_stats)

    def close(self) -> None:
        self._pool.close()

    def _fetch(self, sql: str, params: list[Any]) -> list[tuple]:
        return self._with_connection(lambda conn: conn.execute(sql, params).fetchall())

    def _with_connection(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            with self._pool.connection() as conn:
                return work(conn)
        except sqlite3.Error as exc:
            raise ReadError(f"sqlite: {exc}") from exc


def _stats(conn: sqlite3.Connection) -> StoreStats:
    page_count = conn.execute("PRAGMA page_count").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return StoreStats(
        sessions_by_status=dict(conn.execute(SESSION_STATUS_COUNTS).fetchall()),
        tasks_by_status=dict(conn.execute(TASK_STATUS_COUNTS).fetchall()),
        average_session_s=conn.execute(AVERAGE_SESSION_S).fetchone()[0],
        average_task_ms=conn.execute(AVERAGE_TASK_MS).fetchone()[0],
        database_bytes=page_count * page_size)
