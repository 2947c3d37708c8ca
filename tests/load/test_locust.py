"""A short headless Locust run of the backend model: no request fails, and
after a flush the database holds exactly the last version of every record
Locust's users were acknowledged."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.service import sink_rows

ROOT = Path(__file__).resolve().parents[2]
RUN_SECONDS = 30


@pytest.mark.slow
def test_locust_run_loses_nothing(service_factory, mysql_url: str, tmp_path: Path) -> None:
    service = service_factory(mysql_url)
    ledger = tmp_path / "ledger.json"
    env = {**os.environ, "PS_LOCUST_LEDGER": str(ledger), "PS_LOCUST_TASKS_PER_SESSION": "200"}
    run = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
         "-u", "10", "-r", "5", "-t", f"{RUN_SECONDS}s", "--host", f"http://127.0.0.1:{service.ingest_port}",
         "--csv", str(tmp_path / "locust"), "--only-summary", "--stop-timeout", "10"],
        env=env, capture_output=True, text=True, timeout=RUN_SECONDS + 90)
    with open(tmp_path / "locust_stats.csv") as file:
        stats = list(csv.DictReader(file))
    total = next(row for row in stats if row["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 100, run.stderr[-2000:]
    assert int(total["Failure Count"]) == 0, (tmp_path / "locust_failures.csv").read_text()
    assert run.returncode == 0, run.stderr[-2000:]

    assert service.flush().status_code == 200
    acked = json.loads(ledger.read_text())
    for table, key, kind in (("translation_tasks", "task_id", "tasks"),
                             ("translation_sessions", "session_id", "sessions")):
        stored = {r[key]: r for r in sink_rows(service.sink_url, table, f"{key}, status, updated_at")}
        assert set(stored) == set(acked[kind]), f"{kind}: rows missing or extra"
        for name, (version, status) in acked[kind].items():
            row = stored[name]
            assert row["status"] == status, (name, row, version)
            assert row["updated_at"].strftime("%Y-%m-%dT%H:%M:%S.%fZ") == version, (name, row, version)
