"""The embedded session store: a SQLite file (WAL) shared by every process
of one machine. synchronous=FULL: a revoke must survive a power loss, or a
logged-out session could come back. A validation writes only when its slide
passes touch_granularity, so most validations are one indexed read."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from plugins.sessions import Failures, SessionRecord, SessionStoreError, touch_granularity

SCHEMA = """
CREATE TABLE IF NOT EXISTS user_sessions (
    token_hash TEXT PRIMARY KEY, session_id TEXT NOT NULL UNIQUE, user_id TEXT NOT NULL,
    created_us INTEGER NOT NULL, expires_us INTEGER NOT NULL, idle_us INTEGER NOT NULL,
    idle_expires_us INTEGER NOT NULL, last_seen_us INTEGER NOT NULL, ip TEXT, user_agent TEXT,
    data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_user_sessions_user ON user_sessions (user_id, created_us);
CREATE INDEX IF NOT EXISTS idx_user_sessions_expiry ON user_sessions (expires_us);
CREATE INDEX IF NOT EXISTS idx_user_sessions_idle ON user_sessions (idle_expires_us);
CREATE TABLE IF NOT EXISTS login_failures (
    login_key TEXT PRIMARY KEY, count INTEGER NOT NULL, window_end_us INTEGER NOT NULL);
"""
_COLUMNS = ("session_id, user_id, created_us, expires_us, idle_us, idle_expires_us, last_seen_us, ip,"
            " user_agent, data")
_DATA = msgspec.json.Decoder(dict[str, Any])
BUSY_TIMEOUT_S = 10.0
_VALID = "expires_us > ? AND idle_expires_us > ?"


def _record(row: Any) -> SessionRecord:
    return SessionRecord(session_id=row[0], user_id=row[1], created_us=row[2], expires_us=row[3], idle_us=row[4],
                         idle_expires_us=row[5], last_seen_us=row[6], ip=row[7], user_agent=row[8],
                         data=_DATA.decode(row[9]))


class SqliteSessionStore:
    scheme = "sqlite"

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()  # one connection per thread: sqlite3 objects are not shared
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._has_schema = False  # made at first use: a store that cannot be opened yet fails calls, not the start

    @classmethod
    def connect(cls, url: str) -> SqliteSessionStore:
        return cls(Path(url[len("sqlite:///"):]) if url.startswith("sqlite:////") else
                   Path("/" + url[len("sqlite:///"):].lstrip("/")))

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            if not self._has_schema:
                conn.executescript(SCHEMA)
                self._has_schema = True
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise SessionStoreError(f"session store (sqlite) {what}: {exc}") from exc

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._errors(what):
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _get(self, token_hash: str, now_us: int) -> SessionRecord | None:
        row = self._conn().execute(f"SELECT {_COLUMNS} FROM user_sessions WHERE token_hash = ? AND {_VALID}",
                                   (token_hash, now_us, now_us)).fetchone()
        return None if row is None else _record(row)

    def create(self, token_hash: str, record: SessionRecord) -> None:
        with self._write("create") as conn:
            conn.execute(f"INSERT INTO user_sessions (token_hash, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (token_hash, record.session_id, record.user_id, record.created_us, record.expires_us,
                          record.idle_us, record.idle_expires_us, record.last_seen_us, record.ip,
                          record.user_agent, msgspec.json.encode(record.data).decode()))

    def touch(self, token_hash: str, now_us: int) -> SessionRecord | None:
        with self._errors("touch"):
            record = self._get(token_hash, now_us)
        if record is None:
            return None
        slid = min(now_us + record.idle_us, record.expires_us)
        if slid - record.idle_expires_us < touch_granularity(record.idle_us):
            return record
        with self._write("touch") as conn:
            # Still valid at write time: a revoke (or expiry) in between wins.
            done = conn.execute(f"UPDATE user_sessions SET idle_expires_us = ?, last_seen_us = ?"
                                f" WHERE token_hash = ? AND {_VALID}", (slid, now_us, token_hash, now_us, now_us))
            if done.rowcount == 0:
                return None
        return msgspec.structs.replace(record, idle_expires_us=slid, last_seen_us=now_us)

    def set_data(self, token_hash: str, data: dict[str, Any], now_us: int) -> SessionRecord | None:
        """Also a use of the session: it slides the idle expiry as touch does."""
        with self._write("set_data") as conn:
            done = conn.execute("UPDATE user_sessions SET data = ?, last_seen_us = ?,"
                                " idle_expires_us = MIN(? + idle_us, expires_us)"
                                f" WHERE token_hash = ? AND {_VALID}",
                                (msgspec.json.encode(data).decode(), now_us, now_us, token_hash, now_us, now_us))
            if done.rowcount == 0:
                return None
            return self._get(token_hash, now_us)

    def revoke(self, token_hash: str) -> bool:
        with self._write("revoke") as conn:
            return conn.execute("DELETE FROM user_sessions WHERE token_hash = ?", (token_hash,)).rowcount > 0

    def revoke_id(self, session_id: str) -> bool:
        with self._write("revoke") as conn:
            return conn.execute("DELETE FROM user_sessions WHERE session_id = ?", (session_id,)).rowcount > 0

    def revoke_user(self, user_id: str) -> int:
        with self._write("revoke_user") as conn:
            return int(conn.execute("DELETE FROM user_sessions WHERE user_id = ?", (user_id,)).rowcount)

    def list_user(self, user_id: str, now_us: int) -> list[SessionRecord]:
        with self._errors("list_user"):
            rows = self._conn().execute(f"SELECT {_COLUMNS} FROM user_sessions WHERE user_id = ? AND {_VALID}"
                                        " ORDER BY created_us, session_id", (user_id, now_us, now_us)).fetchall()
        return [_record(r) for r in rows]

    def count_active(self, now_us: int) -> int:
        with self._errors("count_active"):
            return int(self._conn().execute(f"SELECT COUNT(*) FROM user_sessions WHERE {_VALID}",
                                            (now_us, now_us)).fetchone()[0])

    def sweep(self, now_us: int) -> int:
        with self._write("sweep") as conn:
            removed = conn.execute("DELETE FROM user_sessions WHERE expires_us <= ? OR idle_expires_us <= ?",
                                   (now_us, now_us)).rowcount
            conn.execute("DELETE FROM login_failures WHERE window_end_us <= ?", (now_us,))
            return int(removed)

    def note_failure(self, login_key: str, window_s: float, now_us: int) -> Failures:
        end = now_us + int(window_s * 1_000_000)
        with self._write("note_failure") as conn:
            conn.execute("INSERT INTO login_failures (login_key, count, window_end_us) VALUES (?, 1, ?)"
                         " ON CONFLICT (login_key) DO UPDATE SET"
                         " count = CASE WHEN window_end_us <= ? THEN 1 ELSE count + 1 END,"
                         " window_end_us = CASE WHEN window_end_us <= ? THEN ? ELSE window_end_us END",
                         (login_key, end, now_us, now_us, end))
            count, window_end = conn.execute("SELECT count, window_end_us FROM login_failures WHERE login_key = ?",
                                             (login_key,)).fetchone()
        return Failures(int(count), (window_end - now_us) / 1e6)

    def failures(self, login_key: str, now_us: int) -> Failures:
        with self._errors("failures"):
            row = self._conn().execute("SELECT count, window_end_us FROM login_failures WHERE login_key = ?"
                                       " AND window_end_us > ?", (login_key, now_us)).fetchone()
        return Failures(0, 0.0) if row is None else Failures(int(row[0]), (row[1] - now_us) / 1e6)

    def clear_failures(self, login_key: str) -> None:
        with self._write("clear_failures") as conn:
            conn.execute("DELETE FROM login_failures WHERE login_key = ?", (login_key,))

    def check(self) -> None:
        with self._errors("check"):
            self._conn().execute("SELECT 1 FROM user_sessions LIMIT 1").fetchall()

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
