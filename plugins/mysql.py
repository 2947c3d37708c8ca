"""MySQL / MariaDB sink (pymysql).

Each batch is one multi-row `INSERT ... ON DUPLICATE KEY UPDATE` per table,
one read of the deletes' tombstones and one COMMIT: three statements per 1000
rows (docs/BENCHMARKS.md). Every updated column is guarded
by the version, so a stale row arriving late changes nothing; updated_at is
assigned last because MySQL evaluates the assignments left to right. Audit
events (append-only, hash-chained) are stored by plugins/audit/mysql.py in the
same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import pymysql
from pymysql.constants import CLIENT

from core.settings import SinkSettings
from plugins.mysql_hosts import MysqlTarget
from plugins import ArchiveChunk, Conflict, RejectedRows, StatusChange, TransientSinkError
from plugins.mysql_literal import statements
from plugins.tables import (SESSION_DELETES, SESSION_DELETES_MYSQL, UPSERT_TABLES, VERSION_NODE, Table, TableRows,
                            deleted_sessions_in, rows_left, without_deleted)

# Refused for good: bad values and constraints (pymysql maps some of these to
# OperationalError), and a statement too large for max_allowed_packet
# (splitting the batch fixes that one). 4025: MariaDB CHECK constraint;
# 3819: MySQL CHECK constraint; 3140: MySQL invalid JSON; 1644: a trigger's
# SIGNAL (an operator's own rule refusing the row).
_REJECT_CODES = {1048, 1153, 1264, 1265, 1292, 1301, 1366, 1406, 1644, 3140, 3819, 4025}
READ_TIMEOUT_S = 120
DELETE_CHUNK = 5000
CLEANUP_CHUNK = 100  # sessions per cleanup transaction
T = TypeVar("T")  # a hung server must not block the flusher forever
# Strict mode: a value the column cannot hold is refused, never truncated.
SESSION_INIT = "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', time_zone = '+00:00'"
# Read committed: fewer gap locks, and existence checks see the latest commits.
ISOLATION = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"


def _create(table: Table, collation: str) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {table.name} ({table.mysql_columns}\n)"
            f" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation}")


def _upsert(table: str, columns: Sequence[str]) -> tuple[str, str]:
    """(prefix, suffix) of a multi-row upsert: the rows go in between. The
    version is (updated_at, version_node); version_node is assigned after the
    columns it guards and before updated_at, which its own guard reads."""
    keep = [c for c in columns[1:] if c not in ("created_at", "updated_at", VERSION_NODE)]
    newer = f"(VALUES(updated_at), VALUES({VERSION_NODE})) >= (updated_at, {VERSION_NODE})"
    guarded = ", ".join(f"{c} = IF({newer}, VALUES({c}), {c})" for c in [*keep, VERSION_NODE])
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ",
        f" ON DUPLICATE KEY UPDATE {guarded},"
        f" created_at = LEAST(created_at, VALUES(created_at)),"
        f" updated_at = GREATEST(updated_at, VALUES(updated_at))",
    )


UPSERTS = {table.name: _upsert(table.name, table.write_columns) for table in UPSERT_TABLES}


def _add_version_node(cur: pymysql.cursors.Cursor, table: Table) -> None:
    """A table made before versions carried their node gets the column (instant on MariaDB 10.4+)."""
    cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = %s"
                " AND column_name = %s", (table.name, VERSION_NODE))
    if not cur.fetchone():
        cur.execute(f"ALTER TABLE {table.name} ADD COLUMN {VERSION_NODE} SMALLINT UNSIGNED NOT NULL DEFAULT 0"
                    " AFTER updated_at")


def connect_params(settings: SinkSettings) -> tuple[MysqlTarget, dict[str, Any]]:
    """(the node(s) of sink.url, the other pymysql.connect keyword arguments): the sink's and its backup's."""
    return MysqlTarget(settings.url), dict(
        charset="utf8mb4", autocommit=False, connect_timeout=settings.connect_timeout,
        read_timeout=READ_TIMEOUT_S, write_timeout=READ_TIMEOUT_S, init_command=SESSION_INIT,
        client_flag=CLIENT.FOUND_ROWS,  # UPDATE counts matched rows, not changed ones
    )


class MysqlSink:
    parallel_writes = True
    def __init__(self, settings: SinkSettings) -> None:
        self._target, self._params = connect_params(settings)
        self._node = (settings.node_id,)  # appended to each upserted row
        self._conn: pymysql.connections.Connection | None = None
        self._max_stmt_bytes = 1024 * 1024

    @classmethod
    def connect(cls, settings: SinkSettings) -> MysqlSink:
        return cls(settings)

    def migrate(self) -> None:
        """Create the database and tables when missing (utf8mb4, binary no-pad keys)."""
        from plugins.audit import mysql as audit_mysql  # not at the top: an import cycle (via direct_db)
        conn = self._connection(with_database=False)
        try:
            with conn.cursor() as cur:
                collation = _key_collation(cur)
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{self._target.database}`"
                            f" CHARACTER SET utf8mb4 COLLATE {collation}")
                cur.execute(f"USE `{self._target.database}`")
                for table in UPSERT_TABLES:
                    cur.execute(_create(table, collation))
                    _add_version_node(cur, table)
                cur.execute(SESSION_DELETES_MYSQL.format(collation=collation))
                audit_mysql.migrate(cur, collation)
            conn.commit()
        except pymysql.err.MySQLError as exc:
            raise _convert(exc) from exc
        finally:
            conn.close()

    def write(self, batch: Sequence[TableRows]) -> set[str]:
        """One transaction, table by table; per key the highest updated_at wins
        (an append-only table: the first write of a key, plugins/audit/).
        Rows accepted before their session's delete are left out. The
        tombstones are read after the upserts, under a shared lock: a delete
        that committed before (even one this transaction's upsert waited for)
        is seen, and one still running waits for this commit and then removes
        these rows. When the read finds a delete the rows written did not
        allow for, the transaction is rolled back and written again without
        them (rare: a delete through another node while its writes drain)."""
        from plugins.audit import mysql as audit_mysql  # not at the top: an import cycle (via direct_db)
        ids = deleted_sessions_in(batch)
        deleted: dict[str, int] = {}
        try:
            conn = self._connection()
            while True:
                with conn.cursor() as cur:
                    for part in without_deleted(batch, deleted):
                        if not part.rows:
                            continue
                        if part.table.kind.write == "append":
                            audit_mysql.append_events(cur, part.rows, self._max_stmt_bytes)
                            continue
                        prefix, suffix = UPSERTS[part.table.name]
                        rows = [row + self._node for row in part.rows]
                        for statement in statements(prefix, rows, suffix, self._max_stmt_bytes):
                            cur.execute(statement)
                    found = _deletions(cur, ids) if ids else {}
                if rows_left(batch, found) == rows_left(batch, deleted):
                    conn.commit()
                    return set(found)
                conn.rollback()  # tombstones only grow: this ends
                deleted = found
        except pymysql.err.MySQLError as exc:
            self._rollback_or_drop(exc)
            raise _convert(exc) from exc
        except Exception:
            self._drop()  # a bug met mid-transaction: closing the connection discards what it wrote
            raise

    def delete_session(self, session_id: str, deleted_at_us: int | None = None) -> int | None:
        def run(cur: pymysql.cursors.Cursor) -> int | None:
            cur.execute("SELECT 1 FROM translation_sessions WHERE session_id = %s", (session_id,))
            if not cur.fetchone():
                return None
            if deleted_at_us is not None:  # first: a write that reads tombstones after its upserts waits for it
                cur.execute(f"INSERT INTO {SESSION_DELETES} (session_id, deleted_at_us) VALUES (%s, %s)"
                            " ON DUPLICATE KEY UPDATE deleted_at_us = GREATEST(deleted_at_us, VALUES(deleted_at_us))",
                            (session_id, deleted_at_us))
            deleted = self._delete_in_chunks(cur, "DELETE FROM translation_tasks WHERE session_id = %s", (session_id,))
            cur.execute("DELETE FROM translation_sessions WHERE session_id = %s", (session_id,))
            return deleted
        return self._run(run)

    def set_session_status(self, session_id: str, status: str, version: str) -> StatusChange | None:
        def run(cur: pymysql.cursors.Cursor) -> StatusChange | None:
            cur.execute(f"SELECT (updated_at, {VERSION_NODE}) <= (%s, %s), status FROM translation_sessions"
                        " WHERE session_id = %s FOR UPDATE", (version, *self._node, session_id))
            row = cur.fetchone()
            if row is None:
                return None
            if not row[0]:
                return StatusChange(False, row[1])
            cur.execute(f"UPDATE translation_sessions SET status = %s, updated_at = GREATEST(updated_at, %s),"
                        f" {VERSION_NODE} = %s WHERE session_id = %s", (status, version, *self._node, session_id))
            return StatusChange(True, status)
        return self._run(run)

    def cleanup(self, completed_before: str, failed_before: str, dry_run: bool) -> tuple[int, int]:
        def select(cur: pymysql.cursors.Cursor) -> list[str]:
            cur.execute("SELECT session_id FROM translation_sessions WHERE (status = 'completed' AND updated_at < %s)"
                        " OR (status = 'failed' AND updated_at < %s)", (completed_before, failed_before))
            return [r[0] for r in cur.fetchall()]
        ids = self._run(select)
        sessions = tasks = 0
        for start in range(0, len(ids), CLEANUP_CHUNK):
            chunk = ids[start:start + CLEANUP_CHUNK]
            done = self._run(lambda cur: self._cleanup_chunk(cur, chunk, dry_run))
            sessions, tasks = sessions + done[0], tasks + done[1]
        return sessions, tasks

    def retain_audit_events(self, before: str, archive: ArchiveChunk | None = None) -> int:
        from plugins.audit import mysql as audit_mysql  # not at the top: an import cycle (via direct_db)
        deleted = 0
        while True:
            done = self._run(lambda cur: audit_mysql.retain_chunk(cur, before, archive))
            deleted += done
            if not done:
                return deleted

    def _cleanup_chunk(self, cur: pymysql.cursors.Cursor, ids: list[str], dry_run: bool) -> tuple[int, int]:
        if dry_run:
            cur.execute("SELECT count(*) FROM translation_tasks WHERE session_id IN %s", (ids,))
            return len(ids), cur.fetchone()[0]
        tasks = self._delete_in_chunks(cur, "DELETE FROM translation_tasks WHERE session_id IN %s", (ids,))
        return cur.execute("DELETE FROM translation_sessions WHERE session_id IN %s", (ids,)), tasks

    def _delete_in_chunks(self, cur: pymysql.cursors.Cursor, sql: str, args: tuple) -> int:
        # Bounded transactions: a session with 200,000 tasks is deleted 5,000 at a
        # time; a crash in between replays the command, which finishes the job.
        total = 0
        while True:
            deleted = cur.execute(f"{sql} LIMIT {DELETE_CHUNK}", args)
            total += deleted
            if deleted < DELETE_CHUNK:
                return total
            cur.connection.commit()

    def _run(self, work: Callable[[pymysql.cursors.Cursor], T]) -> T:
        """work(cursor) in one transaction, errors converted."""
        try:
            conn = self._connection()
            with conn.cursor() as cur:
                result = work(cur)
            conn.commit()
            return result
        except pymysql.err.MySQLError as exc:
            self._rollback_or_drop(exc)
            raise _convert(exc) from exc

    def existing(self, table: Table, keys: Iterable[str]) -> set[str]:
        ids = list(keys)
        found: set[str] = set()
        try:
            conn = self._connection()
            with conn.cursor() as cur:
                for start in range(0, len(ids), 500):
                    chunk = ids[start:start + 500]
                    cur.execute(f"SELECT {table.key} FROM {table.name} WHERE {table.key} IN %s", (chunk,))
                    found.update(row[0] for row in cur.fetchall())
            conn.rollback()  # end the read transaction
        except pymysql.err.MySQLError as exc:
            self._rollback_or_drop(exc)
            raise _convert(exc) from exc
        return found

    def ping(self) -> bool:
        try:
            self._connection().ping(reconnect=False)
            return True
        except (pymysql.err.MySQLError, TransientSinkError):  # connecting converts its error already
            self._drop()
            return False

    def close(self) -> None:
        self._drop()

    def _connection(self, with_database: bool = True) -> pymysql.connections.Connection:
        if self._conn is not None and with_database:
            return self._conn
        try:
            conn = self._target.connect("" if with_database else None, **self._params)
            with conn.cursor() as cur:
                cur.execute(ISOLATION)
            if with_database:
                self._max_stmt_bytes = _max_statement_bytes(conn)
        except pymysql.err.MySQLError as exc:
            raise _convert(exc) from exc
        if with_database:
            self._conn = conn
        return conn

    def _rollback_or_drop(self, exc: pymysql.err.MySQLError) -> None:
        if isinstance(_convert(exc), TransientSinkError):
            self._drop()  # the connection may be dead or mid-result: start clean
            if _node_failed(exc):
                self._target.failed()
            return
        try:
            if self._conn is not None:
                self._conn.rollback()
        except pymysql.err.MySQLError:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except pymysql.err.Error:
                pass  # already closed by the server; nothing else to release
            self._conn = None


def _key_collation(cur: pymysql.cursors.Cursor) -> str:
    # Keys must compare byte for byte and without trailing-space padding, as
    # the flusher's coalescing does: 'a' and 'a ' are different tasks.
    cur.execute("SELECT VERSION()")
    return "utf8mb4_nopad_bin" if "mariadb" in cur.fetchone()[0].lower() else "utf8mb4_0900_bin"


def _deletions(cur: pymysql.cursors.Cursor, ids: set[str]) -> dict[str, int]:
    """When each of these sessions was last deleted, read under a shared lock (see write)."""
    found: dict[str, int] = {}
    listed = sorted(ids)
    for start in range(0, len(listed), 500):
        cur.execute(f"SELECT session_id, deleted_at_us FROM {SESSION_DELETES} WHERE session_id IN %s"
                    " LOCK IN SHARE MODE", (listed[start:start + 500],))
        found.update((row[0], int(row[1])) for row in cur.fetchall())
    return found


def _max_statement_bytes(conn: pymysql.connections.Connection) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT @@max_allowed_packet")
        packet = int(cur.fetchone()[0])
    conn.rollback()
    return max(256 * 1024, min(packet - 64 * 1024, 64 * 1024 * 1024))


# 2003 cannot connect, 2006/2013 gone or lost, 1047 WSREP not ready (a Galera node outside the primary
# component), 1053 server shutdown: the node is unusable, try the next one. 1213 (a deadlock, or a Galera
# certification conflict) and 1205 are retried on the same node.
_NODE_FAILED = {2003, 2006, 2013, 2055, 1047, 1053, 4031}


def _node_failed(exc: pymysql.err.MySQLError) -> bool:
    return bool(exc.args) and exc.args[0] in _NODE_FAILED


def _convert(exc: pymysql.err.MySQLError) -> Exception:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    if isinstance(exc, pymysql.err.DataError | pymysql.err.IntegrityError) or code in _REJECT_CODES:
        return RejectedRows(f"mysql error {code}: {exc.args[-1] if exc.args else exc}", f"mysql error {code}")
    if code == 1213:
        return Conflict(f"mysql error {code}: {exc.args[-1] if exc.args else exc}")
    # Connection loss, lock wait timeout, server shutdown, and anything
    # unexpected: retry in order rather than drop data.
    return TransientSinkError(f"mysql error {code}: {exc.args[-1] if exc.args else exc}")
