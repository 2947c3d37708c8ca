"""Where each archived session is: the `archived_sessions` table in the sink's
database, and `archived_audit` for audit events' objects.

The flusher writes an index row in the same transaction that deletes the
session from the hot tables, so a session is always in one of them: the hot
tables, or the index (whose object was stored before). The query process
reads the index to find a session's frame and to list what is archived."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec

from core.settings import SinkSettings
from plugins import TransientSinkError
from plugins.direct_db import DirectDatabase, DirectTables, Execute

MYSQL_SCHEMA = (
    # session_id as bytes: keys compare byte for byte ('a' and 'a ' are two sessions), as in the hot tables.
    """CREATE TABLE IF NOT EXISTS archived_sessions (
        session_id VARBINARY(144) NOT NULL PRIMARY KEY,
        state VARCHAR(16) NOT NULL COMMENT 'archived, or restored (back in the hot tables: no longer listed)',
        session_status VARCHAR(16) NOT NULL,
        created_at DATETIME(6) NOT NULL,
        session_row MEDIUMTEXT NOT NULL COMMENT 'the session''s stored row as a JSON array: the list''s summary',
        month CHAR(7) NOT NULL COMMENT 'of the session''s updated_at: the object''s partition',
        object_key VARCHAR(512) NOT NULL,
        frame_offset BIGINT UNSIGNED NOT NULL,
        frame_bytes BIGINT UNSIGNED NOT NULL,
        tasks BIGINT UNSIGNED NOT NULL,
        archived_at DATETIME(6) NOT NULL,
        restored_at DATETIME(6) NULL,
        KEY idx_archived_list (state, created_at, session_id),
        KEY idx_archived_month (month)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE {collation}""",
    """CREATE TABLE IF NOT EXISTS archived_audit (
        object_key VARCHAR(512) NOT NULL PRIMARY KEY,
        month CHAR(7) NOT NULL COMMENT 'of the first event''s occurred_at',
        events BIGINT UNSIGNED NOT NULL,
        object_bytes BIGINT UNSIGNED NOT NULL,
        first_seq BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        first_occurred_at DATETIME(6) NOT NULL,
        last_occurred_at DATETIME(6) NOT NULL,
        archived_at DATETIME(6) NOT NULL,
        KEY idx_archived_audit_month (month, first_seq)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE {collation}""",
)

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS archived_sessions (
    session_id TEXT PRIMARY KEY, state TEXT NOT NULL, session_status TEXT NOT NULL, created_at TEXT NOT NULL,
    session_row TEXT NOT NULL, month TEXT NOT NULL, object_key TEXT NOT NULL, frame_offset INTEGER NOT NULL,
    frame_bytes INTEGER NOT NULL, tasks INTEGER NOT NULL, archived_at TEXT NOT NULL, restored_at TEXT);
CREATE INDEX IF NOT EXISTS idx_archived_list ON archived_sessions (state, created_at, session_id);
CREATE INDEX IF NOT EXISTS idx_archived_month ON archived_sessions (month);
CREATE TABLE IF NOT EXISTS archived_audit (
    object_key TEXT PRIMARY KEY, month TEXT NOT NULL, events INTEGER NOT NULL, object_bytes INTEGER NOT NULL,
    first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, first_occurred_at TEXT NOT NULL,
    last_occurred_at TEXT NOT NULL, archived_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_archived_audit_month ON archived_audit (month, first_seq);
"""

COLUMNS = ("session_id", "state", "session_status", "created_at", "session_row", "month", "object_key",
           "frame_offset", "frame_bytes", "tasks", "archived_at", "restored_at")
_SELECT = ", ".join(COLUMNS)
AUDIT_COLUMNS = ("object_key", "month", "events", "object_bytes", "first_seq", "last_seq", "first_occurred_at",
                 "last_occurred_at", "archived_at")
IN_CHUNK = 500  # ids per IN (...) list


class ArchiveDbError(TransientSinkError):
    """The database did not answer the archive's statement; the flusher retries the command in order."""


class Entry(NamedTuple):
    session_id: str
    state: str  # "archived" or "restored"
    session_status: str
    created_at: str
    session_row: str  # JSON array: the stored row
    month: str
    object_key: str
    frame_offset: int
    frame_bytes: int
    tasks: int
    archived_at: str
    restored_at: str | None

    @property
    def session(self) -> tuple:
        return tuple(_ROW.decode(self.session_row))


class MonthSummary(NamedTuple):
    month: str
    sessions: int
    tasks: int
    frame_bytes: int
    objects: int


class AuditMonth(NamedTuple):
    month: str
    events: int
    object_bytes: int
    objects: int


_ROW = msgspec.json.Decoder(list[str | int | float | None])


def _entry(row: Sequence[Any]) -> Entry:
    sid = row[0].decode() if isinstance(row[0], bytes) else row[0]
    return Entry(sid, *row[1:])


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


class ArchiveIndex(DirectTables):
    @classmethod
    def open(cls, settings: SinkSettings) -> ArchiveIndex:
        return cls(DirectDatabase(settings, MYSQL_SCHEMA, SQLITE_SCHEMA, ArchiveDbError, "archive index"))

    # -- the flusher's writes ------------------------------------------------

    def move_out(self, entries: Sequence[Entry]) -> int:
        """In one transaction: record where each session now is, and delete it
        and its tasks from the hot tables. Returns the tasks deleted."""
        def work(execute: Execute, cur: Any) -> int:
            deleted = 0
            for start in range(0, len(entries), IN_CHUNK):
                chunk = entries[start:start + IN_CHUNK]
                for entry in chunk:
                    execute(f"REPLACE INTO archived_sessions ({_SELECT}) VALUES ({_marks(len(COLUMNS))})", *entry)
                ids = [e.session_id for e in chunk]
                execute(f"DELETE FROM translation_tasks WHERE session_id IN ({_marks(len(ids))})", *ids)
                deleted += cur.rowcount
                execute(f"DELETE FROM translation_sessions WHERE session_id IN ({_marks(len(ids))})", *ids)
            return deleted
        return int(self._db.write(work))

    def mark_restored(self, session_id: str, at: str) -> None:
        self._db.write(lambda execute, _cur: execute(
            "UPDATE archived_sessions SET state = 'restored', restored_at = %s WHERE session_id = %s",
            at, session_id))

    # -- reads -----------------------------------------------------------------

    def get(self, session_id: str) -> Entry | None:
        rows = self._db.read(f"SELECT {_SELECT} FROM archived_sessions WHERE session_id = %s", session_id)
        return _entry(rows[0]) if rows else None

    def lookup(self, session_ids: Sequence[str]) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        for start in range(0, len(session_ids), IN_CHUNK):
            chunk = list(session_ids[start:start + IN_CHUNK])
            for row in self._db.read(f"SELECT {_SELECT} FROM archived_sessions"
                                     f" WHERE session_id IN ({_marks(len(chunk))})", *chunk):
                entry = _entry(row)
                found[entry.session_id] = entry
        return found

    def page(self, statuses: Sequence[str], created_from: str | None, created_before: str | None,
             after: tuple[str, str] | None, limit: int) -> list[Entry]:
        """Archived sessions (not restored), newest created first, after the (created_at, session_id) key."""
        where, args = ["state = 'archived'"], []
        if statuses:
            where.append(f"session_status IN ({_marks(len(statuses))})")
            args += list(statuses)
        if created_from is not None:
            where.append("created_at >= %s")
            args.append(created_from)
        if created_before is not None:
            where.append("created_at < %s")
            args.append(created_before)
        if after is not None:
            where.append("(created_at < %s OR (created_at = %s AND session_id < %s))")
            args += [after[0], after[0], after[1]]
        sql = (f"SELECT {_SELECT} FROM archived_sessions WHERE {' AND '.join(where)}"
               f" ORDER BY created_at DESC, session_id DESC LIMIT {int(limit)}")
        return [_entry(row) for row in self._db.read(sql, *args)]

    def months(self) -> list[MonthSummary]:
        rows = self._db.read("SELECT month, COUNT(*), COALESCE(SUM(tasks), 0), COALESCE(SUM(frame_bytes), 0),"
                             " COUNT(DISTINCT object_key) FROM archived_sessions WHERE state = 'archived'"
                             " GROUP BY month ORDER BY month")
        return [MonthSummary(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]

    def audit_months(self) -> list[AuditMonth]:
        rows = self._db.read("SELECT month, COALESCE(SUM(events), 0), COALESCE(SUM(object_bytes), 0), COUNT(*)"
                             " FROM archived_audit GROUP BY month ORDER BY month")
        return [AuditMonth(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def audit_objects(self, month: str) -> list[tuple]:
        return [tuple(r) for r in self._db.read(
            f"SELECT {', '.join(AUDIT_COLUMNS)} FROM archived_audit WHERE month = %s ORDER BY first_seq", month)]
