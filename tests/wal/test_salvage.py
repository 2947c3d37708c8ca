"""A damaged spool is refused with a clear message; salvage keeps every intact entry."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from core.records import KIND_TASKS
from core.settings import SpoolSettings
from testkit.service import appended, task
from wal import Spool
from wal.salvage import check, salvage
from wal.types import Append


def _spool_with(path: Path, count: int) -> list[int]:
    spool = Spool.open(SpoolSettings(path=str(path), sync="normal"))
    seqs = []
    for i in range(count):
        body = msgspec.json.encode({"tasks": [task(f"t-{i}-{j}", "s", source_text="x" * 3000) for j in range(5)]})
        seqs.extend(appended(spool.append_many([Append(KIND_TASKS, body, 5)])))
    spool.close()
    return seqs


def test_a_healthy_spool_checks_ok(tmp_path: Path) -> None:
    _spool_with(tmp_path / "spool.db", 20)
    report = check(tmp_path / "spool.db")
    assert report.is_ok and report.entries == 20 and report.records == 100


def test_truncated_spool_is_reported_and_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    _spool_with(path, 60)
    original = {e.payload for e in Spool.open(SpoolSettings(path=str(path))).read(0, 10_000)}
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.truncate(size * 2 // 3)
    report = check(path)
    assert not report.is_ok and report.problems
    out = salvage(path, tmp_path / "salvaged.db")
    assert 0 < out.entries_copied < 60
    salvaged = Spool.open(SpoolSettings(path=str(tmp_path / "salvaged.db")))
    entries = salvaged.read(0, 10_000)
    assert {e.payload for e in entries} <= original  # intact content, nothing invented
    assert [e.received_at_us for e in entries] == sorted(e.received_at_us for e in entries)
    assert salvaged.stats().pending_tasks == 5 * out.entries_copied
    salvaged.close()
    assert check(tmp_path / "salvaged.db").is_ok
    assert out.entries_copied + len(out.entries_lost) <= 60


def test_garbage_in_a_payload_is_named(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    _spool_with(path, 3)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE entries SET payload = x'7b7b7b' WHERE seq = 2")
    conn.commit()
    conn.close()
    report = check(path)
    assert [p.split(":")[0] for p in report.problems] == ["entry 2"]
    out = salvage(path, tmp_path / "out.db")
    assert (out.entries_copied, out.entries_lost) == (2, [2])


def test_a_file_that_is_not_sqlite_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"garbage" * 1000)
    report = check(path)
    assert not report.is_ok and "SQLite cannot read" in report.problems[0]


def test_a_spool_being_created_is_not_called_damaged(tmp_path: Path) -> None:
    # Another process has just created the file and not yet its tables.
    sqlite3.connect(tmp_path / "spool.db").execute("PRAGMA journal_mode = WAL").fetchall()
    assert check(tmp_path / "spool.db").is_ok
