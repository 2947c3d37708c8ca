"""A spool damaged on disk: the service refuses to start and says which file
and what to do; `spool check` names the problem; `spool salvage` keeps every
intact entry, and once it is moved into place the records reach the database."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys

from testkit.service import Service, session, sink_rows, task, wait_for


def _cli(service: Service, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core.cli", "--config", str(service.config), *args],
                          capture_output=True, text=True, timeout=60)


def test_truncated_spool_is_refused_then_salvaged(tmp_path) -> None:
    sink_url = f"sqlite:///{tmp_path / 'store.db'}"
    # Acknowledged records that stay in the spool: the flusher would wait an hour to write them.
    first = Service(tmp_path / "svc", sink_url, max_delay=3600, batch_rows=100_000, shutdown_grace=0)
    first.start()
    assert first.post_sessions([session("s-1")]).status_code == 202
    for i in range(40):
        assert first.post_tasks([task(f"t-{i}-{j}", "s-1", source_text="字" * 3000) for j in range(5)]).status_code == 202
    assert first.stop() == 0
    first.http.close()
    spool = first.spool_path
    # Move everything from the WAL into the main file first (a clean stop usually does, a killed
    # worker may not), so that the damage below always hits the entries.
    conn = sqlite3.connect(spool)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()
    with open(spool, "r+b") as file:  # lose the last third of the file, as a failing disk might
        file.truncate(spool.stat().st_size * 2 // 3)

    broken = Service(tmp_path / "svc", sink_url)
    broken.start(wait=False)
    try:
        assert broken.proc is not None and broken.proc.wait(120) == 78, broken.tail()
    finally:
        broken.kill()
    log = broken.log.read_text()
    assert f"The spool {spool} is damaged" in log and "persistence-service spool salvage" in log

    check = _cli(broken, "spool", "check")
    assert check.returncode == 1 and str(spool) in check.stderr
    salvaged = _cli(broken, "spool", "salvage", "--output", str(tmp_path / "salvaged.db"))
    assert "salvaged" in salvaged.stdout, salvaged.stdout + salvaged.stderr
    copied = int(salvaged.stdout.split("salvaged ")[1].split(" ")[0])
    assert copied > 1
    for suffix in ("", "-wal", "-shm"):
        spool.with_name(spool.name + suffix).unlink(missing_ok=True)
    shutil.move(tmp_path / "salvaged.db", spool)
    assert _cli(broken, "spool", "check").returncode == 0

    fixed = Service(tmp_path / "svc", sink_url)
    fixed.start()
    try:
        assert fixed.flush().status_code == 200
        tasks = wait_for(lambda: sink_rows(sink_url, "translation_tasks", "task_id"), 10, "salvaged tasks")
        # The session entry came first, so it survived; whole requests survive or not, never half of one.
        assert [r["session_id"] for r in sink_rows(sink_url, "translation_sessions", "session_id")] == ["s-1"]
        assert len(tasks) % 5 == 0 and len(tasks) == 5 * (copied - 1)
    finally:
        fixed.kill()
