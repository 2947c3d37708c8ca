"""The embedded blob store: files under one folder, content-addressed.

    <root>/tmp/<pid>.<random>     bytes being written (never read by anyone)
    <root>/uploads/<file_id>      one finished upload, not yet in the catalog
    <root>/sha256/ab/<digest>     content the catalog refers to

A writer appends to a temp file, then fsyncs it, renames it to its key and
fsyncs the folder: a crash leaves either no object or the whole one, and a
reader never sees half a file. Temp files carry their writer's pid, so a
sweep removes those of dead processes at once (a kill -9 mid-upload leaves
nothing after the next start) and leaves live writers alone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from core.settings import FilesSettings
from plugins.blobs import READ_CHUNK_BYTES, BlobMissing, BlobStoreError

TMP = "tmp"
UPLOADS = "uploads"
BACKUPS = "backups/"  # backup/parts.py PREFIX


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """True while the process runs; a zombie (killed, not yet reaped: common
    in containers whose init does not reap) writes nothing more."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill()
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


class LocalWriter:
    def __init__(self, store: LocalBlobStore, key: str) -> None:
        self._store = store
        self._target = store.path_of(key)
        self._temp = store.root / TMP / f"{os.getpid()}.{secrets.token_hex(8)}"
        self._file: BinaryIO | None = open(self._temp, "xb")

    def write(self, data: bytes) -> None:
        assert self._file is not None, "write after commit or abort"
        self._file.write(data)

    def commit(self) -> None:
        assert self._file is not None, "commit after commit or abort"
        file, self._file = self._file, None
        try:
            file.flush()
            os.fsync(file.fileno())
            file.close()
            self._target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(self._temp, self._target)
            fsync_dir(self._target.parent)
        except OSError as exc:
            file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp)
            raise BlobStoreError(f"local store: cannot write {self._target.name}: {exc.strerror}") from exc

    def abort(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)


class LocalBlobStore:
    scheme = "file"

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def open(cls, settings: FilesSettings) -> LocalBlobStore:
        root = Path(settings.url[len("file://"):])
        for folder in (root, root / TMP, root / UPLOADS, root / "sha256"):
            folder.mkdir(parents=True, exist_ok=True)
        return cls(root)

    def path_of(self, key: str) -> Path:
        # Keys are made by the service (uploads/<uuid>, sha256/ab/<hex>); this only guards a bug.
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"not a store key: {key!r}")
        return self.root / key

    def writer(self, key: str) -> LocalWriter:
        return LocalWriter(self, key)

    def content_key(self, sha256: str, staged_key: str) -> str:
        return f"sha256/{sha256[:2]}/{sha256}"

    def promote(self, staged_key: str, key: str) -> bool:
        if staged_key == key:
            return True
        staged, target = self.path_of(staged_key), self.path_of(key)
        if target.exists():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, target)  # same digest, same bytes: a racing promote of the same content is harmless
        fsync_dir(target.parent)
        return True

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self.path_of(key).stat().st_size
        except FileNotFoundError:
            raise BlobMissing(key) from None

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        try:
            file = open(self.path_of(key), "rb")
        except FileNotFoundError:
            raise BlobMissing(key) from None
        return _FileChunks(file, start, end)

    def delete(self, key: str) -> None:
        path = self.path_of(key)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        # A backup's folder goes with its last object. (Not content folders: a writer may be
        # about to rename into one it has just made.)
        if key.startswith(BACKUPS) and path.parent != self.root / BACKUPS.rstrip("/"):
            with contextlib.suppress(OSError):  # not empty yet, or gone
                path.parent.rmdir()

    def listing(self, prefix: str) -> Iterator[tuple[str, int]]:
        folder, _, start = prefix.rpartition("/")
        base = self.path_of(folder) if folder else self.root
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix) and not key.startswith(TMP + "/") and path.is_file():
                try:
                    yield key, path.stat().st_size
                except FileNotFoundError:
                    continue  # deleted meanwhile

    def presign_get(self, key: str, expires_in: int, filename_header: str, content_type: str) -> str | None:
        return None  # the query process signs with files.signing_secret and serves the bytes

    def presign_put(self, key: str, expires_in: int, content_type: str) -> tuple[str, dict[str, str]] | None:
        return None

    def sweep(self, older_than_s: float, is_live: Callable[[str], bool]) -> int:
        removed = 0
        cutoff = time.time() - older_than_s
        for temp in (self.root / TMP).iterdir():
            pid = temp.name.partition(".")[0]
            dead = not pid.isdigit() or not pid_alive(int(pid))
            if dead or _mtime(temp) < cutoff:
                removed += _unlink(temp)
        for upload in (self.root / UPLOADS).iterdir():
            if _mtime(upload) < cutoff and not is_live(f"{UPLOADS}/{upload.name}"):
                removed += _unlink(upload)
        return removed

    def check(self) -> None:
        probe = self.root / TMP / f"{os.getpid()}.health"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise BlobStoreError(f"local store {self.root} is not writable: {exc.strerror}") from exc

    def close(self) -> None:
        pass


class _FileChunks:
    """The bytes [start, end) of an open file; close() releases it, read or not."""

    def __init__(self, file: BinaryIO, start: int, end: int | None) -> None:
        self._file = file
        file.seek(start)
        self._left = None if end is None else end - start

    def __iter__(self) -> _FileChunks:
        return self

    def __next__(self) -> bytes:
        want = READ_CHUNK_BYTES if self._left is None else min(READ_CHUNK_BYTES, self._left)
        chunk = self._file.read(want) if want > 0 else b""
        if not chunk:
            self.close()
            raise StopIteration
        if self._left is not None:
            self._left -= len(chunk)
        return chunk

    def close(self) -> None:
        self._file.close()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")  # gone meanwhile: nothing to remove


def _unlink(path: Path) -> int:
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    return 1
