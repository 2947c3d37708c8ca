"""A database the query process writes during the request (the file catalog,
the user directory): what differs between SQLite and MySQL/MariaDB, and a
small pool of connections shared by the process's threads.

Unlike the flusher's sink, these writes are synchronous: the answer waits
for the commit, so a read that follows it sees it. Each user of this module
brings its own schema (MySQL statements, an SQLite script) and its own error
type; a driver error never leaves this module untranslated.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import pymysql
from pymysql.constants import CLIENT

from core.settings import SinkSettings
from plugins import SinkError
from plugins.mysql import ISOLATION, READ_TIMEOUT_S, SESSION_INIT
from plugins.mysql_hosts import MysqlTarget
from plugins.mysql_reader import CONVERSIONS, SYNC_WAIT

CONNECTIONS = 4
IDLE_CHECK_S = 2.0  # a connection idle longer than this is pinged before it is used
DUPLICATE_KEY = 1062  # MySQL's ER_DUP_ENTRY
WSREP_NOT_READY = 1047


class Cursor(Protocol):
    rowcount: int

    def execute(self, sql: str, args: Sequence[Any] = ...) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...


Execute = Callable[..., Any]


class Duplicate(Exception):
    """A unique key refused the write; `key` names the index (MySQL) or the column (SQLite)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class Dialect:
    """What differs between the two databases: connecting, the transaction
    that locks, the parameter mark."""

    lock: str  # appended to a SELECT that must hold its rows until commit

    def connect(self) -> Any: ...

    def migrate(self, conn: Any, mysql: Sequence[str], sqlite: str) -> None: ...

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[Cursor]:
        yield conn.cursor()

    def sql(self, statement: str) -> str:
        return statement

    def is_lost(self, exc: Exception) -> bool:
        return True

    def duplicate(self, exc: Exception) -> Duplicate | None:
        return None


class Mysql(Dialect):
    lock = " FOR UPDATE"

    def __init__(self, settings: SinkSettings) -> None:
        self.target = MysqlTarget(settings.url)
        self.database = self.target.database
        self.params = dict(charset="utf8mb4", autocommit=False, connect_timeout=settings.connect_timeout,
                           read_timeout=READ_TIMEOUT_S, write_timeout=READ_TIMEOUT_S, init_command=SESSION_INIT,
                           client_flag=CLIENT.FOUND_ROWS, conv=CONVERSIONS)

    def connect(self) -> Any:
        conn = self.target.connect(**self.params)
        with conn.cursor() as cur:
            cur.execute(ISOLATION)
            if self.target.is_cluster:
                cur.execute(SYNC_WAIT)  # users and files read right after another node wrote them
        return conn

    def migrate(self, conn: Any, mysql: Sequence[str], sqlite: str) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT @@collation_database")
            collation = cur.fetchone()[0]
            for statement in mysql:
                cur.execute(statement.format(collation=collation))
        conn.commit()

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[Cursor]:
        try:
            with conn.cursor() as cur:
                yield cur
            conn.commit()
        except BaseException:
            with contextlib.suppress(pymysql.err.Error):
                conn.rollback()
            raise

    def is_lost(self, exc: Exception) -> bool:
        return isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError)

    def duplicate(self, exc: Exception) -> Duplicate | None:
        if isinstance(exc, pymysql.err.IntegrityError) and exc.args and exc.args[0] == DUPLICATE_KEY:
            # "Duplicate entry 'x' for key 'users.uq_users_email'": the index is the last quoted name
            return Duplicate(str(exc.args[1]).rsplit("'", 2)[-2].rpartition(".")[2])
        return None


class Sqlite(Dialect):
    lock = ""  # BEGIN IMMEDIATE already holds the database's write lock

    def __init__(self, settings: SinkSettings) -> None:
        self.path = Path(settings.url[len("sqlite:///"):])
        self.timeout = settings.connect_timeout

    def connect(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=max(self.timeout, 10.0), isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # an answer promises a durable write
        return conn

    def migrate(self, conn: Any, mysql: Sequence[str], sqlite: str) -> None:
        conn.executescript(sqlite)

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[Cursor]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn.cursor()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def sql(self, statement: str) -> str:
        return statement.replace("%s", "?")

    def is_lost(self, exc: Exception) -> bool:
        return False  # a file: the connection stays usable after an error

    def duplicate(self, exc: Exception) -> Duplicate | None:
        text = str(exc)
        if isinstance(exc, sqlite3.IntegrityError) and text.startswith("UNIQUE constraint failed: "):
            # "UNIQUE constraint failed: users.email_key": the first column named
            return Duplicate(text.split(": ", 1)[1].split(",")[0].rpartition(".")[2])
        return None


class DirectDatabase:
    """Pooled connections to the sink's database for one area's tables. A
    driver error becomes `error` (a SinkError subclass the area defines), a
    unique-key refusal becomes Duplicate; nothing of a failed write stays."""

    def __init__(self, settings: SinkSettings, mysql_schema: Sequence[str], sqlite_schema: str,
                 error: type[SinkError], what: str, on_connect: Callable[[Any], None] | None = None) -> None:
        self._on_connect = on_connect  # e.g. SQL functions a reader calls
        self.dialect: Dialect = Mysql(settings) if urlsplit(settings.url).scheme == "mysql" else Sqlite(settings)
        self._schemas = (mysql_schema, sqlite_schema)
        self._error = error
        self._what = what
        self._idle: queue.LifoQueue[tuple[Any, float]] = queue.LifoQueue()  # (connection, idle since)
        self._migrated = False

    @property
    def lock(self) -> str:
        return self.dialect.lock

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        conn = self._take()
        try:
            yield conn
        except (pymysql.err.Error, sqlite3.Error) as exc:
            if self.dialect.is_lost(exc):
                with contextlib.suppress(pymysql.err.Error):
                    conn.close()
                conn = None
                self._drop_idle()  # made to the same server: as likely dead as this one
                if isinstance(self.dialect, Mysql) and exc.args and exc.args[0] == WSREP_NOT_READY:
                    self.dialect.target.failed()  # a Galera node outside the primary component: use the next
            duplicate = self.dialect.duplicate(exc)
            if duplicate is not None:
                raise duplicate from exc
            raise self._error(f"{self._what}: {exc}") from exc
        finally:
            if conn is not None and self._idle.qsize() < CONNECTIONS:
                self._idle.put((conn, time.monotonic()))
            elif conn is not None:
                conn.close()

    def _take(self) -> Any:
        """An idle connection, checked with a ping when it has been idle a while (the server may have
        restarted, or a Galera node left, meanwhile), else a new one."""
        while True:
            try:
                conn, since = self._idle.get_nowait()
            except queue.Empty:
                return self._connect()
            if time.monotonic() - since < IDLE_CHECK_S or not isinstance(self.dialect, Mysql):
                return conn
            try:
                conn.ping(reconnect=False)
                return conn
            except pymysql.err.Error:
                with contextlib.suppress(pymysql.err.Error):
                    conn.close()

    def _drop_idle(self) -> None:
        while True:
            try:
                conn, _ = self._idle.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(pymysql.err.Error, sqlite3.Error):
                conn.close()

    def _connect(self) -> Any:
        try:
            conn = self.dialect.connect()
            if self._on_connect is not None:
                self._on_connect(conn)
            if not self._migrated:
                self.dialect.migrate(conn, *self._schemas)
                self._migrated = True
            return conn
        except (pymysql.err.Error, sqlite3.Error, OSError) as exc:
            raise self._error(f"{self._what}: cannot connect: {exc}") from exc

    def write(self, work: Callable[[Execute, Cursor], Any]) -> Any:
        """work(execute, cursor) in one write transaction."""
        with self.connection() as conn, self.dialect.transaction(conn) as cur:
            return work(lambda sql, *args: cur.execute(self.dialect.sql(sql), args), cur)

    def read(self, sql: str, *args: Any) -> list[Any]:
        for attempt in (1, 2):
            try:
                with self.connection() as conn:
                    cur = conn.cursor()
                    cur.execute(self.dialect.sql(sql), args)
                    rows = cur.fetchall()
                    if isinstance(conn, pymysql.connections.Connection):
                        conn.rollback()  # end the read snapshot: the next read sees later commits
                    return list(rows)
            except SinkError as exc:
                lost = isinstance(exc.__cause__, Exception) and self.dialect.is_lost(exc.__cause__)
                if attempt == 2 or not lost:
                    raise
                # A read is safe to repeat: once, on a new connection (to the next node of a cluster).
        raise AssertionError("unreachable")

    def migrate(self) -> None:
        with self.connection():
            pass

    def ping(self) -> bool:
        try:
            self.read("SELECT 1")
            return True
        except SinkError:
            return False

    def close(self) -> None:
        self._drop_idle()


class DirectTables:
    """Base of an area's tables (file catalog, user directory): the database
    they live in and what every area does with it alike."""

    def __init__(self, db: DirectDatabase) -> None:
        self._db = db

    def migrate(self) -> None:
        self._db.migrate()

    def ping(self) -> bool:
        return self._db.ping()

    def close(self) -> None:
        self._db.close()
