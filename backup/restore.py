"""Restore a backup into the configured sink and spool, with the service
stopped (`persistence-service backup restore ID`).

1. Refuse when a process has the spool open (the service runs), or when the
   sink or the spool holds records (unless --force, which keeps the old
   MySQL tables as <name>__before_restore and replaces the SQLite files).
2. Stage everything beside its target, checking every part as it is read
   (checksums, sizes, SQLite's own check): a damaged backup stops here and
   changes nothing.
3. Write a marker beside the spool (`<spool>.restoring`, naming the
   backup), swap in the sink, then the spool, then remove the marker.

A crash before the marker leaves the old state; after it, the service
refuses to start (wal.Spool.open) until the same restore is run again,
which finishes it. So the sink and the spool are never from two states.
The blob store is not touched: file contents are immutable and kept where
they are (`backup verify` reports those listed that are gone).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import msgspec
from msgspec import Struct

from backup import mysql_dump, sqlite_files
from backup.parts import RECORD_TABLES, Manifest, read_part, read_rows
from backup.service import Backups, sink_kind, sqlite_sink_path
from core.settings import Settings
from plugins.blobs.local import fsync_dir
from wal.restoring import marker_path

SPOOL_TABLES = ("entries", "held", "dead_letters")


class RestoreRefused(Exception):
    """The target is not in a state to be restored into; nothing was changed."""


class Marker(Struct):
    backup_id: str
    sink_done: bool = False  # the sink is swapped in: a rerun only redoes the spool


class RestoreReport(Struct):
    backup_id: str
    sink: str
    records: dict[str, int]
    kept_tables: list[str]  # MySQL: the replaced tables that held records


def restore(backups: Backups, backup_id: str, force: bool = False,
            say: Callable[[str], None] = lambda text: None) -> RestoreReport:
    settings = backups.settings
    manifest = backups.get(backup_id)
    if manifest.status != "completed":
        raise RestoreRefused(f"backup {backup_id} is {manifest.status}; only a completed backup can be restored")
    if manifest.sink != sink_kind(settings):
        raise RestoreRefused(f"backup {backup_id} is of a {manifest.sink} sink; sink.url names a "
                             f"{sink_kind(settings)} one")
    spool = Path(settings.spool.path)
    _refuse_if_running(spool)
    marker = marker_path(spool)
    resuming = _read_marker(marker)
    if resuming is not None and resuming.backup_id != backup_id:
        raise RestoreRefused(f"the restore of backup {resuming.backup_id} was interrupted: run `persistence-service "
                             f"backup restore {resuming.backup_id}` to finish it first")
    if resuming is None and not force:
        _refuse_if_not_empty(settings, manifest, spool)
    sink_done = resuming is not None and resuming.sink_done

    say(f"staging backup {backup_id} ({manifest.size_bytes} bytes)")
    staged_spool = _stage_spool(backups, manifest, spool)
    try:
        staged_sink = None if sink_done else _stage_sink(backups, manifest)
    except BaseException:
        if staged_spool is not None:
            sqlite_files.remove(staged_spool)
        raise
    say("staged and checked; swapping it in")
    _write_marker(marker, Marker(backup_id, sink_done))
    kept: list[str] = []
    if not sink_done:
        if manifest.sink == "sqlite":
            assert staged_sink is not None
            sqlite_files.swap(staged_sink, sqlite_sink_path(settings))
        else:
            kept = mysql_dump.swap(settings.sink, manifest.tables)
        _write_marker(marker, Marker(backup_id, sink_done=True))
    if staged_spool is not None:
        sqlite_files.swap(staged_spool, spool)
    else:  # the backup had no spool: start with an empty one
        for suffix in ("", "-wal", "-shm"):
            sqlite_files.remove(spool.with_name(spool.name + suffix))
    os.unlink(marker)
    fsync_dir(marker.parent)
    return RestoreReport(backup_id, manifest.sink, msgspec.to_builtins(manifest.records), kept)


def _refuse_if_running(spool: Path) -> None:
    users = _processes_holding(spool)
    if users:
        raise RestoreRefused(f"the service is running (process {', '.join(map(str, users))} has {spool} open): "
                             "stop it first")


def _processes_holding(path: Path) -> list[int]:
    """Processes with the file (or its -wal) open, from /proc (what lsof reads)."""
    names = {str(path), str(path) + "-wal"}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd) in names for fd in (entry / "fd").iterdir()):
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, or not ours to look at
    return found


def _refuse_if_not_empty(settings: Settings, manifest: Manifest, spool: Path) -> None:
    held: list[str] = []
    if manifest.sink == "sqlite":
        counts = sqlite_files.count_rows(sqlite_sink_path(settings), RECORD_TABLES) \
            if sqlite_sink_path(settings).exists() else {}
    else:
        counts = mysql_dump.existing_rows(settings.sink, list(RECORD_TABLES))
    held += [f"{rows} rows in {table}" for table, rows in counts.items() if rows]
    if spool.exists():
        held += [f"{rows} rows in the spool's {table}" for table, rows in
                 sqlite_files.count_rows(spool, SPOOL_TABLES).items() if rows]
    if held:
        raise RestoreRefused("the target is not empty (" + ", ".join(held) + "); restore into an empty database "
                             "and spool, or pass --force to replace them")


def _stage_spool(backups: Backups, manifest: Manifest, spool: Path) -> Path | None:
    part = manifest.part("spool")
    if part is None:
        return None
    return sqlite_files.stage(read_part(backups.store, part), spool)


def _stage_sink(backups: Backups, manifest: Manifest) -> Path | None:
    if manifest.sink == "sqlite":
        part = manifest.part("sink")
        assert part is not None, "a completed SQLite backup has its sink part"
        return sqlite_files.stage(read_part(backups.store, part), sqlite_sink_path(backups.settings))
    mysql_dump.stage(backups.settings.sink, manifest.tables, manifest.database_collation,
                     lambda part: read_rows(backups.store, part))
    return None


def _read_marker(marker: Path) -> Marker | None:
    try:
        return msgspec.json.decode(marker.read_bytes(), type=Marker)
    except FileNotFoundError:
        return None


def _write_marker(marker: Path, content: Marker) -> None:
    temp = marker.with_name(marker.name + ".tmp")
    with open(temp, "wb") as file:
        file.write(msgspec.json.encode(content))
        file.flush()
        os.fsync(file.fileno())
    os.rename(temp, marker)
    fsync_dir(marker.parent)
