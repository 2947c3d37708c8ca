"""The file catalog: file metadata and content references, in the sink's
database (SQLite or MySQL/MariaDB), written by the query process during the
request so that a file is readable the moment its 201 is sent.

Three tables:
- `files`: one row per file. `state` is 'pending' while an upload is under
  way (invisible to reads; `expires_at` says when the sweeper may drop it)
  and 'ready' once content and metadata are durable.
- `file_tags`: (file_id, tag), so that a tag filter reads an index.
- `file_blobs`: one row per distinct content (sha256): where the store keeps
  it and how many files (pending ones included) refer to it.

The blob row is also the lock between an upload and the collector: an
upload adds its reference in the same transaction as its pending file row,
before it makes the content readable; the collector deletes content only
while it holds the blob row with no reference, and deletes the object
before the row. So content is never removed under a file that refers to it,
and a crash between the two deletes leaves a row without object, which the
next upload of that content repairs (FileService.finish checks the store).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgspec

from core.settings import SinkSettings
from plugins import SinkError
from plugins.direct_db import Cursor, DirectDatabase, DirectTables, Execute, Mysql

COLUMNS = ("file_id", "filename", "content_type", "size", "sha256", "session_id", "owner_id", "tags",
           "created_at")
_SELECT = ", ".join(COLUMNS)
_TAGS = msgspec.json.Decoder(list[str])

MYSQL_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS files (
        file_id VARCHAR(36) NOT NULL PRIMARY KEY,
        filename VARCHAR(255) NOT NULL,
        content_type VARCHAR(255) NOT NULL,
        size BIGINT UNSIGNED NOT NULL,
        sha256 CHAR(64) NULL COMMENT 'NULL until a presigned upload completes',
        session_id VARCHAR(36) NULL,
        owner_id VARCHAR(64) NULL,
        tags TEXT NOT NULL COMMENT 'JSON list',
        state ENUM('pending','ready') NOT NULL,
        upload_key VARCHAR(512) NULL COMMENT 'where a presigned upload puts its bytes',
        expires_at DATETIME(6) NULL COMMENT 'a pending upload is dropped after this',
        created_at DATETIME(6) NOT NULL,
        KEY idx_files_state_created (state, created_at, file_id),
        KEY idx_files_session_created (session_id, created_at, file_id),
        KEY idx_files_owner_created (owner_id, created_at, file_id),
        KEY idx_files_type_created (content_type, created_at, file_id),
        KEY idx_files_sha256 (sha256),
        KEY idx_files_expiry (state, expires_at),
        KEY idx_files_upload_key (upload_key)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE {collation}""",
    """CREATE TABLE IF NOT EXISTS file_tags (
        file_id VARCHAR(36) NOT NULL,
        tag VARCHAR(64) NOT NULL,
        PRIMARY KEY (file_id, tag),
        KEY idx_file_tags_tag (tag, file_id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE {collation}""",
    """CREATE TABLE IF NOT EXISTS file_blobs (
        sha256 CHAR(64) NOT NULL PRIMARY KEY,
        store_key VARCHAR(512) NOT NULL,
        size BIGINT UNSIGNED NOT NULL,
        refs BIGINT NOT NULL,
        created_at DATETIME(6) NOT NULL,
        KEY idx_file_blobs_refs (refs),
        KEY idx_file_blobs_key (store_key)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE {collation}""",
)

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    file_id TEXT PRIMARY KEY, filename TEXT NOT NULL, content_type TEXT NOT NULL, size INTEGER NOT NULL,
    sha256 TEXT, session_id TEXT, owner_id TEXT, tags TEXT NOT NULL, state TEXT NOT NULL,
    upload_key TEXT, expires_at TEXT, created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_files_state_created ON files (state, created_at, file_id);
CREATE INDEX IF NOT EXISTS idx_files_session_created ON files (session_id, created_at, file_id);
CREATE INDEX IF NOT EXISTS idx_files_owner_created ON files (owner_id, created_at, file_id);
CREATE INDEX IF NOT EXISTS idx_files_type_created ON files (content_type, created_at, file_id);
CREATE INDEX IF NOT EXISTS idx_files_sha256 ON files (sha256);
CREATE INDEX IF NOT EXISTS idx_files_expiry ON files (state, expires_at);
CREATE INDEX IF NOT EXISTS idx_files_upload_key ON files (upload_key);
CREATE TABLE IF NOT EXISTS file_tags (file_id TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (file_id, tag));
CREATE INDEX IF NOT EXISTS idx_file_tags_tag ON file_tags (tag, file_id);
CREATE TABLE IF NOT EXISTS file_blobs (
    sha256 TEXT PRIMARY KEY, store_key TEXT NOT NULL, size INTEGER NOT NULL, refs INTEGER NOT NULL,
    created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_file_blobs_refs ON file_blobs (refs);
CREATE INDEX IF NOT EXISTS idx_file_blobs_key ON file_blobs (store_key);
"""


class CatalogError(SinkError):
    """The catalog's database cannot be used now; nothing was changed."""


class FileRow(NamedTuple):
    file_id: str
    filename: str
    content_type: str
    size: int
    sha256: str | None
    session_id: str | None
    owner_id: str | None
    tags: list[str]
    created_at: str  # storage text, UTC


class PendingUpload(NamedTuple):
    row: FileRow
    upload_key: str | None
    expires_at: str | None


class FileFilter(msgspec.Struct, frozen=True):
    session_id: str | None = None
    owner_id: str | None = None
    content_type: str | None = None
    tag: str | None = None
    created_from: str | None = None  # created_at >= this (storage text)
    created_before: str | None = None  # created_at < this


def _row(values: Sequence[Any]) -> FileRow:
    return FileRow(values[0], values[1], values[2], int(values[3]), values[4], values[5], values[6],
                   _TAGS.decode(values[7]), values[8])


class FileCatalog(DirectTables):
    def __init__(self, db: DirectDatabase) -> None:
        super().__init__(db)
        self._write = db.write
        self._read = db.read
        self._lock = db.lock
        self._upsert_blob = (
            "INSERT INTO file_blobs (sha256, store_key, size, refs, created_at) VALUES (%s, %s, %s, 1, %s)"
            + (" ON DUPLICATE KEY UPDATE refs = refs + 1" if isinstance(db.dialect, Mysql)
               else " ON CONFLICT (sha256) DO UPDATE SET refs = refs + 1"))

    @classmethod
    def open(cls, settings: SinkSettings) -> FileCatalog:
        return cls(DirectDatabase(settings, MYSQL_SCHEMA, SQLITE_SCHEMA, CatalogError, "file catalog"))

    # -- uploads -----------------------------------------------------------

    def reserve(self, row: FileRow, candidate_key: str, expires_at: str) -> str:
        """Add a pending file and its reference to its content, in one
        transaction; the store key the content is kept under (candidate_key
        unless the content was stored before)."""
        assert row.sha256 is not None

        def work(execute: Execute, cur: Cursor) -> str:
            self._insert(execute, row, None, expires_at)
            return self._reference(execute, cur, row.sha256 or "", candidate_key, row.size, row.created_at)
        return self._write(work)

    def add_upload(self, row: FileRow, upload_key: str, expires_at: str) -> None:
        """A presigned upload: a pending file whose content is not there yet."""
        self._write(lambda execute, cur: self._insert(execute, row, upload_key, expires_at))

    def attach(self, file_id: str, sha256: str, candidate_key: str, now: str) -> str | None:
        """A presigned upload's bytes arrived and were checked: record their
        digest and reference; the store key, or None when the upload is gone."""
        def work(execute: Execute, cur: Cursor) -> str | None:
            execute(f"SELECT size FROM files WHERE file_id = %s AND state = 'pending' AND sha256 IS NULL"
                    f"{self._lock}", file_id)
            found = cur.fetchone()
            if found is None:
                return None
            execute("UPDATE files SET sha256 = %s WHERE file_id = %s", sha256, file_id)
            return self._reference(execute, cur, sha256, candidate_key, int(found[0]), now)
        return self._write(work)

    def mark_ready(self, file_id: str) -> bool:
        def work(execute: Execute, cur: Cursor) -> bool:
            execute("UPDATE files SET state = 'ready', expires_at = NULL, upload_key = NULL"
                    " WHERE file_id = %s AND state = 'pending'", file_id)
            return cur.rowcount == 1
        return self._write(work)

    def repoint(self, sha256: str, store_key: str) -> None:
        """The blob row's object was gone (a collector crashed between its two deletes): use this copy."""
        self._write(lambda execute, cur: execute("UPDATE file_blobs SET store_key = %s WHERE sha256 = %s",
                                                 store_key, sha256))

    def _insert(self, execute: Execute, row: FileRow, upload_key: str | None, expires_at: str) -> None:
        execute(f"INSERT INTO files ({_SELECT}, state, upload_key, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending', %s, %s)",
                *row[:7], msgspec.json.encode(row.tags).decode(), row.created_at, upload_key, expires_at)
        for tag in row.tags:
            execute("INSERT INTO file_tags (file_id, tag) VALUES (%s, %s)", row.file_id, tag)

    def _reference(self, execute: Execute, cur: Cursor, sha256: str, candidate_key: str, size: int,
                   now: str) -> str:
        execute(self._upsert_blob, sha256, candidate_key, size, now)
        execute("SELECT store_key FROM file_blobs WHERE sha256 = %s", sha256)
        return cur.fetchone()[0]

    # -- reads -------------------------------------------------------------

    def get(self, file_id: str) -> FileRow | None:
        rows = self._read(f"SELECT {_SELECT} FROM files WHERE file_id = %s AND state = 'ready'", file_id)
        return _row(rows[0]) if rows else None

    def store_key(self, sha256: str) -> str | None:
        rows = self._read("SELECT store_key FROM file_blobs WHERE sha256 = %s", sha256)
        return rows[0][0] if rows else None

    def pending(self, file_id: str) -> PendingUpload | None:
        rows = self._read(f"SELECT {_SELECT}, upload_key, expires_at FROM files"
                          " WHERE file_id = %s AND state = 'pending'", file_id)
        return PendingUpload(_row(rows[0]), rows[0][9], rows[0][10]) if rows else None

    def list_ready(self, flt: FileFilter, after: tuple[str, ...] | None, limit: int) -> list[FileRow]:
        """Ready files, newest first (created_at, file_id descending), strictly after `after`."""
        where, args = ["state = 'ready'"], []
        for column in ("session_id", "owner_id", "content_type"):
            value = getattr(flt, column)
            if value is not None:
                where.append(f"{column} = %s")
                args.append(value)
        if flt.tag is not None:
            where.append("file_id IN (SELECT file_id FROM file_tags WHERE tag = %s)")
            args.append(flt.tag)
        if flt.created_from is not None:
            where.append("created_at >= %s")
            args.append(flt.created_from)
        if flt.created_before is not None:
            where.append("created_at < %s")
            args.append(flt.created_before)
        if after is not None:
            where.append("(created_at < %s OR (created_at = %s AND file_id < %s))")
            args += [after[0], after[0], after[1]]
        rows = self._read(f"SELECT {_SELECT} FROM files WHERE {' AND '.join(where)}"
                          f" ORDER BY created_at DESC, file_id DESC LIMIT {int(limit)}", *args)
        return [_row(r) for r in rows]

    def counts(self) -> tuple[int, int, int]:
        """(ready files, distinct contents, their bytes)."""
        files = self._read("SELECT COUNT(*) FROM files WHERE state = 'ready'")[0][0]
        blobs, size = self._read("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM file_blobs")[0]
        return int(files), int(blobs), int(size)

    def is_live_key(self, key: str) -> bool:
        """True when a blob row or a pending upload names this store key (the sweep keeps it)."""
        return bool(self._read("SELECT 1 FROM file_blobs WHERE store_key = %s UNION ALL"
                               " SELECT 1 FROM files WHERE upload_key = %s", key, key))

    # -- deletes and collection --------------------------------------------

    def delete(self, file_id: str) -> str | None:
        """Delete a ready file and drop its reference; its digest, or None when unknown."""
        def work(execute: Execute, cur: Cursor) -> str | None:
            execute(f"SELECT sha256 FROM files WHERE file_id = %s AND state = 'ready'{self._lock}", file_id)
            found = cur.fetchone()
            if found is None:
                return None
            self._drop(execute, file_id, found[0])
            return found[0]
        return self._write(work)

    def expired_uploads(self, now: str, limit: int = 500) -> list[str]:
        return [r[0] for r in self._read("SELECT file_id FROM files WHERE state = 'pending' AND expires_at < %s"
                                         f" ORDER BY expires_at LIMIT {int(limit)}", now)]

    def drop_expired(self, file_id: str, now: str) -> tuple[str | None, str | None] | None:
        """Drop a pending upload if it expired: (its upload key, its digest), or None."""
        def work(execute: Execute, cur: Cursor) -> tuple[str | None, str | None] | None:
            execute("SELECT upload_key, sha256 FROM files WHERE file_id = %s AND state = 'pending'"
                    f" AND expires_at < %s{self._lock}", file_id, now)
            found = cur.fetchone()
            if found is None:
                return None
            self._drop(execute, file_id, found[1])
            return found[0], found[1]
        return self._write(work)

    def drop_pending(self, file_id: str) -> str | None:
        """Drop a pending upload now (its bytes did not match); its digest if it had one."""
        def work(execute: Execute, cur: Cursor) -> str | None:
            execute(f"SELECT sha256 FROM files WHERE file_id = %s AND state = 'pending'{self._lock}",
                    file_id)
            found = cur.fetchone()
            if found is not None:
                self._drop(execute, file_id, found[0])
            return None if found is None else found[0]
        return self._write(work)

    @staticmethod
    def _drop(execute: Execute, file_id: str, sha256: str | None) -> None:
        execute("DELETE FROM file_tags WHERE file_id = %s", file_id)
        execute("DELETE FROM files WHERE file_id = %s", file_id)
        if sha256 is not None:
            execute("UPDATE file_blobs SET refs = refs - 1 WHERE sha256 = %s", sha256)

    def unreferenced(self, limit: int = 500) -> list[str]:
        return [r[0] for r in self._read(f"SELECT sha256 FROM file_blobs WHERE refs <= 0 LIMIT {int(limit)}")]

    def collect(self, sha256: str, delete_object: Callable[[str], None]) -> bool:
        """Remove content no file refers to: the object first, then its row,
        holding the row all along so no upload can add a reference meanwhile."""
        def work(execute: Execute, cur: Cursor) -> bool:
            execute(f"SELECT store_key, refs FROM file_blobs WHERE sha256 = %s{self._lock}", sha256)
            found = cur.fetchone()
            if found is None or int(found[1]) > 0:
                return False
            delete_object(found[0])
            execute("DELETE FROM file_blobs WHERE sha256 = %s", sha256)
            return True
        return self._write(work)
