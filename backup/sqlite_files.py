"""SQLite files in a backup (the spool always, the sink when it is SQLite):
copied with SQLite's online backup API, restored by a rename.

The copy is made in one backup step, which reads the source inside one read
transaction: a consistent snapshot, while the service goes on writing (WAL
mode lets it). The copy is switched to rollback-journal mode so it is one
self-contained file, then compressed into the store.

A restore writes the file beside its target, checks it, and then (the swap)
checkpoints the old file so its WAL holds nothing, removes its -wal and -shm
and renames the new file over it: a crash leaves the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from backup.parts import BackupDamaged, Part, PartWriter
from plugins.blobs.local import fsync_dir

COPY_CHUNK = 1024 * 1024


def snapshot(source: Path, temp_dir: Path) -> Path:
    """A consistent copy of the database at source, in temp_dir (the caller removes it)."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    copy = temp_dir / f"{os.getpid()}.{secrets.token_hex(6)}.db"
    src = sqlite3.connect(source)  # read-write open, only read: read-only WAL access needs the -shm to exist
    try:
        dst = sqlite3.connect(copy)
        try:
            src.backup(dst)  # pages=-1: one step, one read transaction
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    except BaseException:
        remove(copy)
        raise
    finally:
        src.close()
    return copy


def compress(path: Path, writer: PartWriter, name: str) -> Part:
    try:
        with open(path, "rb") as file:
            while chunk := file.read(COPY_CHUNK):
                writer.write(chunk)
        return writer.commit(name)
    except BaseException:
        writer.abort()
        raise


def count_rows(path: Path, tables: Iterable[str]) -> dict[str, int]:
    """Rows per table of a copy; a table it does not have counts 0."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] if t in present else 0 for t in tables}
    finally:
        conn.close()


def staged_path(target: Path) -> Path:
    return target.with_name(target.name + ".restore")


def stage(chunks: Iterator[bytes], target: Path) -> Path:
    """Write a restored file beside target and check it; BackupDamaged when
    the part or the database in it is damaged (nothing is left behind then)."""
    staged = staged_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove(staged)
    try:
        with open(staged, "wb") as file:
            for chunk in chunks:
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        conn = sqlite3.connect(f"file:{staged}?mode=ro", uri=True)
        try:
            verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
        if verdict != "ok":
            raise BackupDamaged(f"{target.name}: the restored database fails its check: {verdict}")
    except sqlite3.DatabaseError as exc:
        remove(staged)
        raise BackupDamaged(f"{target.name}: the restored file is not a SQLite database ({exc})") from None
    except BaseException:
        remove(staged)
        raise
    return staged


def swap(staged: Path, target: Path) -> None:
    """Put the staged file in place of target (see the module's docstring)."""
    if target.exists():
        conn = sqlite3.connect(target)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        for suffix in ("-wal", "-shm"):
            remove(target.with_name(target.name + suffix))
    os.rename(staged, target)
    fsync_dir(target.parent)


def is_empty(path: Path, tables: Iterable[str]) -> bool:
    """True when the file is absent or none of the tables holds a row."""
    if not path.exists():
        return True
    return not any(count_rows(path, tables).values())


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
