"""Making, listing, checking and pruning backups (restoring: backup/restore.py).

A backup copies the spool first, then the sink. Whatever the flusher
trims from the spool after the spool's copy was written to the sink before
the sink's snapshot, so every write acknowledged before the backup began is
in one of the two; a write in both is harmless, since replaying an entry the
sink already holds changes nothing (versions; the flusher's own crash replay
relies on the same). The blob store's content is not copied (it is
immutable and content-addressed): the backup lists its keys and sizes, and
verify reports those that are gone.

One backup at a time per machine: an flock beside the spool is held while
one runs. A manifest that says "running" while nobody holds the lock
belongs to a process that died: it is reported as failed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec

from backup import mysql_dump, sqlite_files
from backup.parts import (MANIFEST, PREFIX, RECORD_TABLES, BackupDamaged, Manifest, Part, PartWriter,
                          backup_prefix, read_manifest, read_part, read_rows, write_manifest)
from core import metrics
from core.settings import FilesSettings, Settings
from core.times import iso_z, now_us
from persistence_api.backups import Backup, BackupRecords, BackupVerification
from plugins.blobs import BlobMissing, BlobStore, BlobStoreError, open_blob_store
from plugins.blobs.local import pid_alive

logger = logging.getLogger(__name__)

LOCK_FILE = "backup.lock"
TEMP_DIR = "backup-tmp"
LISTING_CHUNK = 1000
INTERRUPTED = "interrupted: the process making it stopped before it ended"


class BackupRunning(Exception):
    """Another backup is being made on this machine."""


class BackupNotFound(Exception):
    pass


class _Lock:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def name(self, backup_id: str) -> None:
        """Say which backup holds the lock (read by running_id)."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, backup_id.encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


def store_settings(settings: Settings) -> FilesSettings:
    """The store backups are kept in: backup.url, else the files store."""
    if not settings.backup.url:
        return settings.files
    return msgspec.structs.replace(settings.files, url=settings.backup.url)


def sink_kind(settings: Settings) -> str:
    return urlsplit(settings.sink.url).scheme


def sqlite_sink_path(settings: Settings) -> Path:
    return Path(settings.sink.url[len("sqlite:///"):])


def new_backup_id(at_us: int) -> str:
    """Sorts by time: <UTC time>-<random>."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at_us / 1e6)) + "-" + secrets.token_hex(3)


def to_view(manifest: Manifest) -> Backup:
    return Backup(manifest.backup_id, manifest.status, iso_z(manifest.started_at_us),
                  iso_z(manifest.finished_at_us) if manifest.finished_at_us else None, manifest.size_bytes,
                  manifest.sink, manifest.location, manifest.records, manifest.error, manifest.trigger)


class Backups:
    def __init__(self, settings: Settings, store: BlobStore | None = None) -> None:
        self.settings = settings
        self.store = store or open_blob_store(store_settings(settings))
        self._files_settings = settings.files
        spool_dir = Path(settings.spool.path).parent
        self._lock_path = spool_dir / LOCK_FILE
        self.temp_dir = spool_dir / TEMP_DIR

    def close(self) -> None:
        self.store.close()

    @property
    def location(self) -> str:
        url = urlsplit(self.store_url)
        netloc = (url.hostname or "") if url.username or url.password else url.netloc  # never a credential
        return urlunsplit((url.scheme, netloc, url.path.rstrip("/") + "/" + PREFIX, url.query, ""))

    @property
    def store_url(self) -> str:
        return store_settings(self.settings).url

    # --- running one ---------------------------------------------------------

    def _try_lock(self) -> _Lock | None:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return _Lock(fd)

    def running_id(self) -> str | None:
        """The backup being made on this machine now, if any."""
        lock = self._try_lock()
        if lock is not None:
            lock.release()
            return None
        try:
            return self._lock_path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def create(self, trigger: str) -> Manifest:
        """Make a backup now, in this thread; BackupRunning when one is being made."""
        lock = self._try_lock()
        if lock is None:
            raise BackupRunning("a backup is being made on this machine")
        try:
            manifest = self._begin(trigger, lock)
        except BaseException:
            lock.release()
            raise
        return self._run(manifest, lock)

    def start(self, trigger: str, only_if: Callable[[list[Manifest]], bool] | None = None) -> Manifest | None:
        """Begin a backup in a thread of its own and return its running
        manifest; BackupRunning when one is being made. With only_if, start
        only when it holds for the backups listed once the lock is held
        (None otherwise): a scheduler's check that another process did not
        just make one."""
        lock = self._try_lock()
        if lock is None:
            raise BackupRunning("a backup is being made on this machine")
        try:
            if only_if is not None and not only_if(self.list_all()):
                lock.release()
                return None
            manifest = self._begin(trigger, lock)
        except BaseException:
            lock.release()
            raise
        threading.Thread(target=self._run, args=(manifest, lock), name=f"backup-{manifest.backup_id}",
                         daemon=True).start()
        return manifest

    def _begin(self, trigger: str, lock: _Lock) -> Manifest:
        started = now_us()
        manifest = Manifest(new_backup_id(started), "running", started, sink_kind(self.settings), self.location,
                            trigger)
        lock.name(manifest.backup_id)
        write_manifest(self.store, manifest)
        return manifest

    def _run(self, manifest: Manifest, lock: _Lock) -> Manifest:
        try:
            self._make(manifest)
            manifest.status = "completed"
        except Exception as exc:  # whatever failed, the manifest must say so; the bug is logged
            manifest.status, manifest.error = "failed", f"{type(exc).__name__}: {exc}"
            logger.exception("backup %s failed", manifest.backup_id)
        try:
            manifest.finished_at_us = now_us()
            write_manifest(self.store, manifest)
            metrics.BACKUPS.labels(manifest.status).inc()
            if manifest.status == "completed":
                logger.info("backup %s completed: %d bytes, %s", manifest.backup_id, manifest.size_bytes,
                            msgspec.to_builtins(manifest.records))
                self.prune(self.settings.backup.keep)
            else:
                self._delete_parts(manifest)
        finally:
            lock.release()
        return manifest

    def _make(self, manifest: Manifest) -> None:
        level = self.settings.backup.compression_level

        def writer(file_name: str) -> PartWriter:
            return PartWriter(self.store, manifest.backup_id, file_name, level)

        self._sweep_temp()
        records = BackupRecords()
        spool = Path(self.settings.spool.path)
        if spool.exists():  # first: see the module's docstring
            copy = sqlite_files.snapshot(spool, self.temp_dir)
            try:
                records.spool_records = _spool_records(copy)
                manifest.parts.append(sqlite_files.compress(copy, writer("spool.sqlite.zst"), "spool"))
            finally:
                sqlite_files.remove(copy)
        if manifest.sink == "sqlite":
            path = sqlite_sink_path(self.settings)
            copy = sqlite_files.snapshot(path, self.temp_dir)
            try:
                for name, rows in sqlite_files.count_rows(copy, RECORD_TABLES).items():
                    setattr(records, RECORD_TABLES[name], rows)
                manifest.parts.append(sqlite_files.compress(copy, writer("sink.sqlite.zst"), "sink"))
            finally:
                sqlite_files.remove(copy)
        else:
            manifest.tables, manifest.database_collation = mysql_dump.dump(self.settings.sink, writer)
            for table in manifest.tables:
                if table.part is not None:
                    manifest.parts.append(table.part)
                    if table.name in RECORD_TABLES:
                        setattr(records, RECORD_TABLES[table.name], table.part.rows)
        manifest.records = records
        manifest.parts.append(self._list_blobs(writer("blobs.zst")))

    def _list_blobs(self, writer: PartWriter) -> Part:
        files = open_blob_store(self._files_settings)
        try:
            chunk: list[list] = []
            for key, size in files.listing(""):
                if key.startswith(PREFIX):
                    continue
                chunk.append([key, size])
                if len(chunk) >= LISTING_CHUNK:
                    writer.write_rows(chunk)
                    chunk = []
            if chunk:
                writer.write_rows(chunk)
            return writer.commit("blobs")
        except BaseException:
            writer.abort()
            raise
        finally:
            files.close()

    def _sweep_temp(self) -> None:
        """Copies left by a backup that was killed (the file names start with the pid that made them)."""
        if not self.temp_dir.is_dir():
            return
        for leftover in self.temp_dir.iterdir():
            pid = leftover.name.partition(".")[0]
            if not pid.isdigit() or not pid_alive(int(pid)):
                sqlite_files.remove(leftover)

    # --- reading them --------------------------------------------------------

    def list_all(self) -> list[Manifest]:
        """Every backup, newest first; "running" ones nobody makes any more say failed."""
        keys = [key for key, _ in self.store.listing(PREFIX) if key.endswith("/" + MANIFEST)]
        manifests = []
        for key in keys:
            try:
                manifests.append(read_manifest(self.store, key))
            except (BlobMissing, msgspec.DecodeError) as exc:  # deleted meanwhile, or not ours
                logger.warning("skipping backup manifest %s: %s", key, exc)
        running = None if not any(m.status == "running" for m in manifests) else self.running_id()
        for manifest in manifests:
            if manifest.status == "running" and manifest.backup_id != running:
                manifest.status, manifest.error = "failed", INTERRUPTED
        return sorted(manifests, key=lambda m: m.backup_id, reverse=True)

    def get(self, backup_id: str) -> Manifest:
        if not _is_backup_id(backup_id):
            raise BackupNotFound(backup_id)
        try:
            manifest = read_manifest(self.store, backup_prefix(backup_id) + MANIFEST)
        except BlobMissing:
            raise BackupNotFound(backup_id) from None
        if manifest.status == "running" and manifest.backup_id != self.running_id():
            manifest.status, manifest.error = "failed", INTERRUPTED
        return manifest

    def verify(self, backup_id: str) -> BackupVerification:
        """Read every part back and check it (checksums, sizes, SQLite's own
        check, row counts); the file contents it lists must still be in the store."""
        manifest = self.get(backup_id)
        problems: list[str] = []
        checked = 0
        if manifest.status != "completed":
            problems.append(f"the backup is {manifest.status}: {manifest.error or 'not finished'}")
        for part in manifest.parts:
            try:
                if part.name in ("spool", "sink"):
                    scratch = self.temp_dir / f"{os.getpid()}.{secrets.token_hex(6)}.verify-{part.name}.db"
                    self.temp_dir.mkdir(parents=True, exist_ok=True)
                    staged = sqlite_files.stage(read_part(self.store, part), scratch)
                    sqlite_files.remove(staged)
                elif part.name == "blobs":
                    problems.extend(self._check_blobs(part))
                else:
                    rows = sum(len(chunk) for chunk in read_rows(self.store, part))
                    if rows != part.rows:
                        problems.append(f"{part.name}: {rows} rows, the manifest says {part.rows}")
                checked += part.stored_bytes
            except BackupDamaged as exc:
                problems.append(str(exc))
            except BlobStoreError as exc:
                problems.append(f"{part.name}: cannot be read: {exc}")
        return BackupVerification(backup_id, "damaged" if problems else "ok", checked, problems)

    def _check_blobs(self, part: Part) -> list[str]:
        files = open_blob_store(self._files_settings)
        missing: list[str] = []
        try:
            for chunk in read_rows(self.store, part):
                for key, size in chunk:
                    try:
                        if files.size(key) != size:
                            missing.append(key)
                    except BlobMissing:
                        missing.append(key)
        finally:
            files.close()
        if not missing:
            return []
        return [f"blobs: {len(missing)} file contents listed in the backup are not in the files store as listed"
                f" (a restore would have their records without their bytes); first: {missing[0]}"]

    # --- pruning -------------------------------------------------------------

    def prune(self, keep: int) -> list[str]:
        """Delete completed backups beyond the newest `keep`, and failed ones
        older than the newest completed; the ids deleted."""
        backups = self.list_all()
        completed = [m for m in backups if m.status == "completed"]
        doomed = completed[keep:]
        if completed:
            doomed += [m for m in backups if m.status == "failed" and m.backup_id < completed[0].backup_id]
        for manifest in doomed:
            self.delete(manifest.backup_id)
        if doomed:
            logger.info("deleted backups %s (backup.keep = %d)", [m.backup_id for m in doomed], keep)
        return [m.backup_id for m in doomed]

    def delete(self, backup_id: str) -> None:
        """Parts first, the manifest last: a crash leaves a manifest whose parts verify reports missing."""
        keys = [key for key, _ in self.store.listing(backup_prefix(backup_id))]
        _delete_all(self.store, [k for k in keys if not k.endswith("/" + MANIFEST)])
        _delete_all(self.store, [k for k in keys if k.endswith("/" + MANIFEST)])

    def _delete_parts(self, manifest: Manifest) -> None:
        try:
            keys = [key for key, _ in self.store.listing(backup_prefix(manifest.backup_id))]
            _delete_all(self.store, [k for k in keys if not k.endswith("/" + MANIFEST)])
        except BlobStoreError as exc:
            logger.warning("parts of failed backup %s left in the store: %s", manifest.backup_id, exc)


def _delete_all(store: BlobStore, keys: Iterable[str]) -> None:
    for key in keys:
        store.delete(key)


def _spool_records(copy: Path) -> int:
    conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    try:
        entries = conn.execute("SELECT coalesce(sum(record_count), 0) FROM entries"
                               " WHERE seq > (SELECT flushed_seq FROM state)").fetchone()[0]
        held = conn.execute("SELECT count(*) FROM held").fetchone()[0]
        return int(entries) + int(held)
    finally:
        conn.close()


def _is_backup_id(text: str) -> bool:
    stamp, _, suffix = text.partition("-")
    return (len(stamp) == 16 and stamp[8] == "T" and stamp.endswith("Z") and stamp[:8].isdigit()
            and stamp[9:15].isdigit() and len(suffix) == 6 and all(c in "0123456789abcdef" for c in suffix))
