"""The writer's optional disk buffer: every record put is first committed to a
SQLite file of this process, and removed once the service acknowledged it, so
a backend killed with records unsent sends them when it starts again.

A folder holds one file per live writer (`<pid>-<random>.db`), each held by an
flock on its `.lock` file for the writer's lifetime. The kernel drops an flock
when its process dies however it dies, so a writer that starts takes over
every file whose lock it can get: those are what crashed processes left.
synchronous=NORMAL in WAL mode: a commit survives the process being killed
(it is in the kernel's page cache), not a power cut; that costs ~10 µs per
put rather than an fsync's milliseconds.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger("persistence_client")

# Connections a forked child inherited: kept referenced so they are never
# closed (and the parent's WAL never checkpointed or removed) from the child.
_INHERITED: list[sqlite3.Connection] = []


class DiskBuffer:
    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.db"
        lock_fd = _lock(self.path)
        assert lock_fd is not None, "a fresh name cannot be locked by another process"
        self._lock_fd = lock_fd
        self._db = _open(self.path)

    def append(self, kind: int, payload: bytes) -> int:
        cur = self._db.execute("INSERT INTO outbox (kind, payload) VALUES (?, ?)", (kind, payload))
        self._db.commit()
        row = cur.lastrowid
        assert row is not None
        return row

    def remove_through(self, row: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE row <= ?", (row,))
        self._db.commit()

    def adopt_orphans(self) -> Iterator[tuple[int, bytes, int]]:
        """Move every orphan file's records into this buffer, oldest file
        first, and yield them (kind, payload, row here) in their put order."""
        orphans = sorted((p for p in self.folder.glob("*.db") if p != self.path), key=lambda p: p.stat().st_mtime)
        for orphan in orphans:
            fd = _lock(orphan)
            if fd is None:
                continue  # a live writer's
            try:
                db = _open(orphan)
                rows = db.execute("SELECT kind, payload FROM outbox ORDER BY row").fetchall()
                db.close()
                adopted = []
                with self._db:
                    for kind, payload in rows:
                        cur = self._db.execute("INSERT INTO outbox (kind, payload) VALUES (?, ?)", (kind, payload))
                        assert cur.lastrowid is not None
                        adopted.append((kind, bytes(payload), cur.lastrowid))
                # Now in our file: a crash from here on sends them again (harmless: upserts
                # by key, events by id), never loses them.
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{orphan}{suffix}").unlink(missing_ok=True)
                if adopted:
                    logger.warning("sending %d records a stopped process left in %s", len(adopted), orphan)
                yield from adopted
            finally:
                Path(f"{orphan}.lock").unlink(missing_ok=True)
                os.close(fd)

    def pending(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        """Stop using the file; when it is empty, remove it."""
        empty = self.pending() == 0
        self._db.close()
        if empty:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            Path(f"{self.path}.lock").unlink(missing_ok=True)
        os.close(self._lock_fd)

    def forget_after_fork(self) -> None:
        """In a forked child: the file stays the parent's. Our copy of the lock
        is closed (the parent's keeps it held) and the connection is left open."""
        _INHERITED.append(self._db)
        os.close(self._lock_fd)


def _lock(db_path: Path) -> int | None:
    fd = os.open(f"{db_path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS outbox (row INTEGER PRIMARY KEY AUTOINCREMENT, kind INTEGER NOT NULL,"
               " payload BLOB NOT NULL)")
    db.commit()
    return db
