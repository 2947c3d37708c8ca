"""Checking a spool file and salvaging what is intact in a damaged one.

`check()` is what the service runs before it starts: SQLite's quick_check,
the format version, and a decode of every entry. `salvage()` copies every
entry that can still be read, record by record if a scan breaks, into a new
spool file; the operator moves it into place (the damaged file is never
modified).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path

import msgspec
from msgspec import Struct

from core.kinds import KINDS
from core.records import COMMAND_TYPES
from core.settings import SpoolSettings
from wal import schema
from wal.spool import Spool
from wal.types import Append

_DECODERS = {**{kind.entry_kind: kind.decoder.decode for kind in KINDS},
             **{kind: msgspec.json.Decoder(kind_type).decode for kind, kind_type in COMMAND_TYPES.items()}}


class CheckReport(Struct):
    path: str
    problems: list[str]
    entries: int = 0
    records: int = 0

    @property
    def is_ok(self) -> bool:
        return not self.problems


class SalvageReport(Struct):
    source: str
    output: str
    entries_copied: int
    entries_lost: list[int]  # seqs that could not be read or decoded


def check(path: str | Path) -> CheckReport:
    """Problems that make this file unusable as a spool (empty list: fine)."""
    report = CheckReport(str(path), [])
    if not Path(path).exists():
        return report  # a missing spool is created at start
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            _check_conn(conn, report)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        report.problems.append(f"SQLite cannot read the file: {exc}")
    return report


def damaged_message(report: CheckReport) -> str:
    """What the operator reads when the service refuses to start."""
    shown = "; ".join(report.problems[:3]) + (f" (+{len(report.problems) - 3} more)" if len(report.problems) > 3 else "")
    return (f"The spool {report.path} is damaged: {shown}. The service will not start on it and has not "
            f"changed it. Stop the service, run `persistence-service spool salvage` to copy every intact "
            f"entry to a new file, move that file to {report.path} (keep the damaged one for analysis), "
            f"then start again. `persistence-service spool check` repeats this check.")


def _check_conn(conn: sqlite3.Connection, report: CheckReport) -> None:
    result = [row[0] for row in conn.execute("PRAGMA quick_check")]
    if result != ["ok"]:
        report.problems.extend(f"quick_check: {line}" for line in result[:10])
        return
    # One snapshot for both reads: another process may commit the new schema between them.
    conn.execute("BEGIN")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    is_empty = not conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()
    conn.execute("COMMIT")
    if version == 0 and is_empty:
        return  # a new spool another process is creating right now
    if version != schema.FORMAT_VERSION:
        report.problems.append(f"spool format {version}, this program reads {schema.FORMAT_VERSION}")
        return
    for seq, kind, count, payload in conn.execute("SELECT seq, kind, record_count, payload FROM entries"):
        report.entries += 1
        report.records += count
        problem = _decode_problem(kind, payload)
        if problem:
            report.problems.append(f"entry {seq}: {problem}")


def _decode_problem(kind: int, payload: bytes) -> str | None:
    decode = _DECODERS.get(kind)
    if decode is None:
        return f"unknown kind {kind}"
    try:
        decode(payload)
    except msgspec.DecodeError as exc:
        return f"payload does not decode: {exc}"
    return None


def salvage(source: str | Path, output: str | Path) -> SalvageReport:
    """Copy every readable, decodable entry of source into a new spool at
    output (which must not exist), keeping their order and acceptance times."""
    if Path(output).exists():
        raise FileExistsError(f"{output} exists; choose another output path")
    rows, lost = _readable_entries(Path(source))
    target = Spool.open(SpoolSettings(path=str(output), sync="full", max_bytes=2**62))
    try:
        copied = target.import_entries(rows)
    finally:
        target.close()
    return SalvageReport(str(source), str(output), copied, lost)


def _readable_entries(source: Path) -> tuple[list[tuple[int, Append]], list[int]]:
    with tempfile.TemporaryDirectory() as folder:
        return _read_copy(_working_copy(source, Path(folder)))


def _working_copy(source: Path, folder: Path) -> Path:
    """A copy of the file (and its WAL) that SQLite can open; a truncated file
    is padded back to the size its header states, so that the pages that are
    left can still be found."""
    copy = folder / source.name
    shutil.copyfile(source, copy)
    wal = source.with_name(source.name + "-wal")
    if wal.exists():
        shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
    with open(copy, "r+b") as file:
        header = file.read(100)
        if len(header) == 100 and header.startswith(b"SQLite format 3\0"):
            page_size = int.from_bytes(header[16:18], "big") or 65536
            pages = int.from_bytes(header[28:32], "big")
            if file.seek(0, 2) < page_size * pages:
                file.truncate(page_size * pages)
    return copy


def _read_copy(path: Path) -> tuple[list[tuple[int, Append]], list[int]]:
    conn = sqlite3.connect(path)
    try:
        seqs = _seqs(conn)
        rows, lost = [], []
        for seq in seqs:
            try:
                row = conn.execute("SELECT kind, received_at_us, record_count, payload FROM entries WHERE seq = ?",
                                   (seq,)).fetchone()
            except sqlite3.DatabaseError:
                lost.append(seq)
                continue
            if row is None:
                continue
            if _decode_problem(row[0], row[3]):
                lost.append(seq)
                continue
            rows.append((row[1], Append(row[0], row[3], row[2])))
        return rows, lost
    finally:
        conn.close()


def _seqs(conn: sqlite3.Connection) -> list[int]:
    try:
        return [row[0] for row in conn.execute("SELECT seq FROM entries ORDER BY seq")]
    except sqlite3.DatabaseError:
        pass  # the scan broke: probe every seq up to the highest one ever handed out
    top = 0
    for sql in ("SELECT seq FROM sqlite_sequence WHERE name = 'entries'", "SELECT max(seq) FROM entries"):
        try:
            row = conn.execute(sql).fetchone()
            top = max(top, row[0] or 0) if row else top
        except sqlite3.DatabaseError:
            continue
    return list(range(1, top + 1))
