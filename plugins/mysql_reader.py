"""MySQL / MariaDB reader (pymysql): a few autocommit connections at READ
COMMITTED, so each statement sees the latest commits and no read holds a
snapshot open. A connection the server dropped is replaced and the read
retried once (reads are idempotent)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from plugins.mysql_hosts import MysqlTarget

import msgspec
import pymysql
from pymysql.constants import FIELD_TYPE
from pymysql.converters import conversions
from pymysql.cursors import Cursor

from core.settings import SinkSettings
from plugins.mysql import ISOLATION, READ_TIMEOUT_S, SESSION_INIT
from plugins.tables import TABLES, TASK_TABLE
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

# Datetimes stay text ('YYYY-MM-DD HH:MM:SS.ffffff', as SQLite stores them) and
# decimals become floats, so both readers return the same values.
CONVERSIONS = {k: v for k, v in conversions.items() if k not in (FIELD_TYPE.DATETIME, FIELD_TYPE.TIMESTAMP)}
CONVERSIONS[FIELD_TYPE.NEWDECIMAL] = float
CONVERSIONS[FIELD_TYPE.DECIMAL] = float

# 2006 server gone, 2013 lost during query, 2055 lost (SSL/read), 4031 idle disconnect (MySQL 8).
_CONNECTION_LOST = {2006, 2013, 2055, 4031}
_DUPLICATE_INDEX = 1061
# (table, name, columns): the tables' read indexes (plugins/tables.py), added
# online to tables made before they were declared.
INDEXES = tuple((table.name, index.name, index.mysql_columns) for table in TABLES for index in table.read_indexes)
AVERAGE_SESSION_S = ("SELECT AVG(TIMESTAMPDIFF(MICROSECOND, created_at, updated_at)) / 1000000"
                     " FROM translation_sessions WHERE status = 'completed'")
DATABASE_BYTES = ("SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables"
                  " WHERE table_schema = DATABASE()")
_TASK_ID = TASK_TABLE.columns.index("task_id")
_JSON_ROWS = msgspec.json.Decoder(list[tuple])


# On a Galera cluster a node applies others' commits a moment after they are certified: a read waits until
# this node has applied everything committed before it started, so a read after /flush sees the flush.
SYNC_WAIT = "SET SESSION wsrep_sync_wait = 1"


class MysqlReader(SqlReader):
    def __init__(self, settings: SinkSettings) -> None:
        self._target = MysqlTarget(settings.url)
        self._params: dict[str, Any] = {
            "charset": "utf8mb4", "autocommit": True,
            "connect_timeout": settings.connect_timeout, "read_timeout": READ_TIMEOUT_S,
            "write_timeout": READ_TIMEOUT_S, "init_command": SESSION_INIT, "conv": CONVERSIONS}
        self._sql = ReadSql("%s", deferred_join=True, json_rows=True)
        self._pool: ConnectionPool[pymysql.connections.Connection] = ConnectionPool(
            self._connect, pymysql.connections.Connection.close, READ_CONNECTIONS)

    def _connect(self) -> pymysql.connections.Connection:
        conn = self._target.connect(**self._params)
        with conn.cursor() as cur:
            cur.execute(ISOLATION)
            if self._target.is_cluster:
                cur.execute(SYNC_WAIT)
        return conn

    def ensure_indexes(self) -> None:
        """Add the read indexes when missing, online (ALGORITHM=INPLACE, LOCK=NONE):
        writes go on while a large table is indexed. Works on MySQL 8 and MariaDB."""
        # Its own connection with no read timeout: indexing a large table takes a while.
        try:
            conn = self._target.connect(**{**self._params, "read_timeout": None})
            try:
                with conn.cursor() as cur:
                    _ensure_indexes(cur)
            finally:
                conn.close()
        except pymysql.err.MySQLError as exc:
            raise ReadError(f"mysql error {_code(exc)}: {exc.args[-1] if exc.args else exc}") from exc

    def open_tasks(self, session_id: str, after: Key | None, limit: int) -> Page:
        # InnoDB secondary indexes end with the primary key, so (session_id, status)
        # is (session_id, status, task_id): a chunk is one range, no sort.
        status, last = open_walk_start(after)
        sql, params = self._sql.open_tasks(session_id, status, last, limit, "task_id")
        page = make_page(self._fetch_rows(sql, params), limit, lambda row: (status, row[_TASK_ID]))
        return open_walk_page(page, status)

    def recovery_counts(self) -> RecoveryCounts:
        return self._run(lambda cur: RecoveryCounts(
            sessions_by_status=_pairs(cur, RECOVERY_SESSIONS),
            open_tasks_by_status=_pairs(cur, RECOVERY_TASKS)))

    def stats(self) -> StoreStats:
        return self._run(_stats)

    def close(self) -> None:
        self._pool.close()

    def _fetch(self, sql: str, params: list[Any]) -> list[tuple]:
        def work(cur: Cursor) -> list[tuple]:
            cur.execute(sql, params)
            return list(cur.fetchall())
        return self._run(work)

    def _fetch_rows(self, sql: str, params: list[Any]) -> list[tuple]:
        """Rows selected as JSON arrays (ReadSql json_rows), as tuples: DECIMAL
        confidence comes as a JSON number (a float), datetimes as the same
        'YYYY-MM-DD HH:MM:SS.ffffff' text the plain protocol gives."""
        rows = self._fetch(sql, params)
        return _JSON_ROWS.decode("[" + ",".join(row[0] for row in rows) + "]") if rows else []

    def _run(self, work: Callable[[Cursor], T]) -> T:
        for attempt in (1, 2):
            try:
                with self._pool.connection() as conn, conn.cursor() as cur:
                    return work(cur)
            except pymysql.err.MySQLError as exc:
                if attempt == 1 and _is_connection_lost(exc):
                    continue  # the pool dropped that connection; the next one is fresh
                raise ReadError(f"mysql error {_code(exc)}: {exc.args[-1] if exc.args else exc}") from exc
        raise AssertionError("unreachable")


def _code(exc: pymysql.err.MySQLError) -> int:
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0


def _is_connection_lost(exc: pymysql.err.MySQLError) -> bool:
    return isinstance(exc, pymysql.err.InterfaceError) or _code(exc) in _CONNECTION_LOST


def _pairs(cur: Cursor, sql: str) -> dict[str, int]:
    cur.execute(sql)
    return {status: int(count) for status, count in cur.fetchall()}


def _scalar(cur: Cursor, sql: str) -> Any:
    cur.execute(sql)
    return cur.fetchone()[0]


def _stats(cur: Cursor) -> StoreStats:
    return StoreStats(
        sessions_by_status=_pairs(cur, SESSION_STATUS_COUNTS),
        tasks_by_status=_pairs(cur, TASK_STATUS_COUNTS),
        average_session_s=_scalar(cur, AVERAGE_SESSION_S),
        average_task_ms=_scalar(cur, AVERAGE_TASK_MS),
        database_bytes=int(_scalar(cur, DATABASE_BYTES)))


def _ensure_indexes(cur: Cursor) -> None:
    for table, name, columns in INDEXES:
        cur.execute("SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE()"
                    " AND table_name = %s AND index_name = %s LIMIT 1", (table, name))
        if cur.fetchone():
            continue
        try:
            cur.execute(f"ALTER TABLE {table} ADD INDEX {name} ({columns}), ALGORITHM=INPLACE, LOCK=NONE")
        except pymysql.err.MySQLError as exc:
            if _code(exc) != _DUPLICATE_INDEX:  # another query process added it first
                raise
