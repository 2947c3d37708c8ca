"""Embedded SQLite sink: the default, so the service runs with no server."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from core.records import SESSION_COLUMNS, TASK_COLUMNS
from core.settings import SinkSettings
from plugins import RejectedRows, StatusChange, TransientSinkError

SCHEMA = """
CREATE TABLE IF NOT EXISTS translation_sessions (
    session_id TEXT PRIMARY KEY, filename TEXT NOT NULL, file_path TEXT NOT NULL,
    status TEXT NOT NULL, llm_provider TEXT NOT NULL, game_info TEXT, metadata TEXT,
    total_tasks INTEGER NOT NULL DEFAULT 0, completed_tasks INTEGER NOT NULL DEFAULT 0,
    failed_tasks INTEGER NOT NULL DEFAULT 0, processing_tasks INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_sessions_status_created ON translation_sessions (status, created_at);
CREATE INDEX IF NOT EXISTS idx_sessions_created ON translation_sessions (created_at);
CREATE INDEX IF NOT EXISTS idx_sessions_updated ON translation_sessions (updated_at);
CREATE TABLE IF NOT EXISTS translation_tasks (
    task_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, batch_id TEXT NOT NULL,
    sheet_name TEXT NOT NULL, row_index INTEGER NOT NULL, column_name TEXT NOT NULL,
    source_text TEXT NOT NULL, target_text TEXT, context TEXT, status TEXT NOT NULL,
    confidence REAL, error_message TEXT, retry_count INTEGER NOT NULL DEFAULT 0,
    start_time TEXT, end_time TEXT, duration_ms INTEGER,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_tasks_session_order ON translation_tasks (session_id, sheet_name, row_index, column_name);
CREATE INDEX IF NOT EXISTS idx_tasks_session_status ON translation_tasks (session_id, status);
CREATE INDEX IF NOT EXISTS idx_tasks_status_created ON translation_tasks (status, created_at);
CREATE INDEX IF NOT EXISTS idx_read_sessions_status_updated ON translation_sessions (status, updated_at);
CREATE INDEX IF NOT EXISTS idx_read_tasks_created ON translation_tasks (created_at, task_id);
CREATE INDEX IF NOT EXISTS idx_read_tasks_session_created ON translation_tasks (session_id, created_at, task_id);
"""


def _upsert(table: str, columns: Sequence[str]) -> str:
    keep = [c for c in columns[1:] if c not in ("created_at", "updated_at")]
    sets = ", ".join(f"{c} = excluded.{c}" for c in keep)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        f" ON CONFLICT ({columns[0]}) DO UPDATE SET {sets},"
        f" created_at = min(created_at, excluded.created_at), updated_at = excluded.updated_at"
        f" WHERE excluded.updated_at >= {table}.updated_at"
    )


CLEANUP_CHUNK = 100  # sessions per cleanup transaction

SESSION_UPSERT = _upsert("translation_sessions", SESSION_COLUMNS)
TASK_UPSERT = _upsert("translation_tasks", TASK_COLUMNS)


class SqliteSink:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def connect(cls, settings: SinkSettings) -> SqliteSink:
        path = Path(settings.url[len("sqlite:///"):])  # settings made it absolute: sqlite:////abs/path
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=settings.connect_timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # the spool is trimmed once this commits
        return cls(conn)

    def migrate(self) -> None:
        """Create tables and indexes when missing."""
        self._conn.executescript(SCHEMA)

    def write(self, sessions: Sequence[tuple], tasks: Sequence[tuple]) -> None:
        """One transaction: sessions, then tasks; per key the highest updated_at wins."""
        with self._transaction() as conn:
            if sessions:
                conn.executemany(SESSION_UPSERT, sessions)
            if tasks:
                conn.executemany(TASK_UPSERT, tasks)

    def delete_session(self, session_id: str) -> int | None:
        with self._transaction() as conn:
            if not conn.execute("SELECT 1 FROM translation_sessions WHERE session_id = ?", (session_id,)).fetchone():
                return None
            deleted = conn.execute("DELETE FROM translation_tasks WHERE session_id = ?", (session_id,)).rowcount
            conn.execute("DELETE FROM translation_sessions WHERE session_id = ?", (session_id,))
            return deleted

    def set_session_status(self, session_id: str, status: str, version: str) -> StatusChange | None:
        with self._transaction() as conn:
            row = conn.execute("SELECT updated_at <= ?, status FROM translation_sessions WHERE session_id = ?",
                               (version, session_id)).fetchone()
            if row is None:
                return None
            if not row[0]:
                return StatusChange(False, row[1])
            conn.execute("UPDATE translation_sessions SET status = ?, updated_at = max(updated_at, ?)"
                         " WHERE session_id = ?", (status, version, session_id))
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

    def existing_sessions(self, session_ids: Iterable[str]) -> set[str]:
        ids = list(session_ids)
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self._conn.execute(
                f"SELECT session_id FROM translation_sessions WHERE session_id IN ({', '.join('?' * len(chunk))})",
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
