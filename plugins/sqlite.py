"""Embedded SQLite sink: the default, so the service runs with no server."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from core.settings import SinkSettings
from plugins import ArchiveChunk, RejectedRows, StatusChange, TransientSinkError
from plugins.audit import sqlite as audit
from plugins.tables import (SESSION_DELETES, SESSION_DELETES_SQLITE, UPSERT_TABLES, VERSION_NODE, Table, TableRows,
                            deleted_sessions_in, without_deleted)

def _schema(table: Table) -> str:
    indexes = [*table.sqlite_indexes, *(f"{i.name} ({i.sqlite_columns})" for i in table.read_indexes)]
    return "".join([f"CREATE TABLE IF NOT EXISTS {table.name} ({table.sqlite_columns}\n);\n",
                    *(f"CREATE INDEX IF NOT EXISTS {i.split(' ', 1)[0]} ON {table.name} {i.split(' ', 1)[1]};\n"
                      for i in indexes)])


SCHEMA = "".join(_schema(table) for table in UPSERT_TABLES) + SESSION_DELETES_SQLITE + audit.SCHEMA


def _upsert(table: str, columns: Sequence[str]) -> str:
    """The version is (updated_at, version_node): a row value comparison."""
    keep = [c for c in columns[1:] if c not in ("created_at", "updated_at")]
    sets = ", ".join(f"{c} = excluded.{c}" for c in keep)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        f" ON CONFLICT ({columns[0]}) DO UPDATE SET {sets},"
        f" created_at = min(created_at, excluded.created_at), updated_at = excluded.updated_at"
        f" WHERE (excluded.updated_at, excluded.{VERSION_NODE}) >= ({table}.updated_at, {table}.{VERSION_NODE})"
    )


CLEANUP_CHUNK = 100  # sessions per cleanup transaction

UPSERTS = {table.name: _upsert(table.name, table.write_columns) for table in UPSERT_TABLES}


def _deletions(conn: sqlite3.Connection, ids: set[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    listed = sorted(ids)
    for start in range(0, len(listed), 500):
        chunk = listed[start:start + 500]
        found.update(conn.execute(f"SELECT session_id, deleted_at_us FROM {SESSION_DELETES} WHERE session_id IN"
                                  f" ({', '.join('?' * len(chunk))})", chunk).fetchall())
    return found


class SqliteSink:
    parallel_writes = False  # one writer at a time holds the database
    def __init__(self, conn: sqlite3.Connection, node_id: int = 0) -> None:
        self._conn = conn
        self._node = (node_id,)  # appended to each upserted row

    @classmethod
    def connect(cls, settings: SinkSettings) -> SqliteSink:
        path = Path(settings.url[len("sqlite:///"):])  # settings made it absolute: sqlite:////abs/path
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=settings.connect_timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # the spool is trimmed once this commits
        return cls(conn, settings.node_id)

    def migrate(self) -> None:
        """Create tables and indexes when missing."""
        self._conn.executescript(SCHEMA)
        for table in UPSERT_TABLES:  # a table made before versions carried their node gets the column
            if VERSION_NODE not in {r[1] for r in self._conn.execute(f"PRAGMA table_info({table.name})")}:
                self._conn.execute(f"ALTER TABLE {table.name} ADD COLUMN {VERSION_NODE} INTEGER NOT NULL DEFAULT 0")

    def write(self, batch: Sequence[TableRows]) -> set[str]:
        """One transaction, table by table; per key the highest updated_at wins
        (an append-only table: the first write of a key). Rows accepted before
        their session's delete are left out."""
        with self._transaction() as conn:
            ids = deleted_sessions_in(batch)
            deleted = _deletions(conn, ids) if ids else {}
            for part in without_deleted(batch, deleted):
                if not part.rows:
                    continue
                if part.table.kind.write == "append":
                    audit.append_events(conn, part.rows)
                else:
                    conn.executemany(UPSERTS[part.table.name], [row + self._node for row in part.rows])
        return set(deleted)

    def delete_session(self, session_id: str, deleted_at_us: int | None = None) -> int | None:
        with self._transaction() as conn:
            if not conn.execute("SELECT 1 FROM translation_sessions WHERE session_id = ?", (session_id,)).fetchone():
                return None
            if deleted_at_us is not None:
                conn.execute(f"INSERT INTO {SESSION_DELETES} (session_id, deleted_at_us) VALUES (?, ?)"
                             " ON CONFLICT (session_id) DO UPDATE SET"
                             " deleted_at_us = max(deleted_at_us, excluded.deleted_at_us)", (session_id, deleted_at_us))
            deleted = conn.execute("DELETE FROM translation_tasks WHERE session_id = ?", (session_id,)).rowcount
            conn.execute("DELETE FROM translation_sessions WHERE session_id = ?", (session_id,))
            return deleted

    def set_session_status(self, session_id: str, status: str, version: str) -> StatusChange | None:
        with self._transaction() as conn:
            row = conn.execute(f"SELECT (updated_at, {VERSION_NODE}) <= (?, ?), status FROM translation_sessions"
                               " WHERE session_id = ?", (version, *self._node, session_id)).fetchone()
            if row is None:
                return None
            if not row[0]:
                return StatusChange(False, row[1])
            conn.execute(f"UPDATE translation_sessions SET status = ?, updated_at = max(updated_at, ?),"
                         f" {VERSION_NODE} = ? WHERE session_id = ?", (status, version, *self._node, session_id))
            return StatusChange(True, status)

    def cleanup(self, completed_before: str, failed_before: str, dry_run: bool) -> tuple[int, int]:
        ids = [r[0] for r in self._conn.execute(
            "SELECT session_id FROM translation_sessions WHERE (status = 'completed' AND updated_at < ?)"
            " OR (status = 'failed' AND updated_at < ?)", (completed_before, failed_before))]
        sessions = tasks = 0
        for start in range(0, len(ids), CLEANUP_CHUNK):
            chunk = ids[start:start + CLEANUP_CHUNK]
            marks = ", ".join("?" * len(chunk))
            with self._transaction() as conn:
                if dry_run:
                    tasks += conn.execute(f"SELECT count(*) FROM translation_tasks WHERE session_id IN ({marks})",
                                          chunk).fetchone()[0]
                    sessions += len(chunk)
                    continue
                tasks += conn.execute(f"DELETE FROM translation_tasks WHERE session_id IN ({marks})", chunk).rowcount
                sessions += conn.execute(f"DELETE FROM translation_sessions WHERE session_id IN ({marks})",
                                         chunk).rowcount
        return sessions, tasks

    def retain_audit_events(self, before: str, archive: ArchiveChunk | None = None) -> int:
        deleted = 0
        while True:
            with self._transaction() as conn:
                done = audit.retain_chunk(conn, before, archive)
            deleted += done
            if not done:
                return deleted

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:  # whatever went wrong, the next transaction must start clean
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _convert(exc) from exc
            raise

    def existing(self, table: Table, keys: Iterable[str]) -> set[str]:
        ids = list(keys)
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self._conn.execute(
                f"SELECT {table.key} FROM {table.name} WHERE {table.key} IN ({', '.join('?' * len(chunk))})",
                chunk).fetchall()
            found.update(r[0] for r in rows)
        return found

    def ping(self) -> bool:
        try:
            self._conn.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    def close(self) -> None:
        self._conn.close()


def _convert(exc: sqlite3.Error) -> Exception:
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError):
        return RejectedRows(f"sqlite: {exc}", f"sqlite {getattr(exc, 'sqlite_errorname', type(exc).__name__)}")
    return TransientSinkError(f"sqlite: {exc}")
