"""GET /stats against the same figures computed from the tables directly."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from testkit.service import session, sink_rows, task
from tests.query.support import Api, unique

SESSION_STATUSES = ("pending", "processing", "completed", "failed", "cancelled")
TASK_STATUSES = ("pending", "processing", "completed", "failed")


def _time(value: Any) -> datetime:  # MySQL rows hold datetimes, SQLite rows hold text
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def test_stats_match_the_tables(api: Api) -> None:
    sid = unique("st")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()  # a completed session took about an hour
    api.write(sessions=[session(sid, status="completed", updated_at=later), session(unique("sf"), status="failed")],
              tasks=[task(f"{sid}-{i}", sid, status=TASK_STATUSES[i % 4], duration_ms=100 * i if i % 2 else None)
                     for i in range(12)])
    body = api.ok("/stats")
    assert set(body) == {"sessions", "tasks", "performance", "storage", "computed_at"}
    sessions = sink_rows(api.service.sink_url, "translation_sessions", "status, created_at, updated_at")
    tasks = sink_rows(api.service.sink_url, "translation_tasks", "status, duration_ms")
    by_status = Counter(r["status"] for r in sessions)
    assert body["sessions"] == {"total": len(sessions), **{s: by_status[s] for s in SESSION_STATUSES}}
    task_status = Counter(r["status"] for r in tasks)
    assert body["tasks"] == {"total": len(tasks), **{s: task_status[s] for s in TASK_STATUSES}}

    durations = [(_time(r["updated_at"]) - _time(r["created_at"])).total_seconds()
                 for r in sessions if r["status"] == "completed"]
    task_ms = [int(r["duration_ms"]) for r in tasks if r["duration_ms"] is not None]
    done, failed = task_status["completed"], task_status["failed"]
    performance = body["performance"]
    assert set(performance) == {"average_session_time", "average_task_time", "success_rate"}
    assert performance["average_session_time"] == pytest.approx(sum(durations) / len(durations), abs=0.01)
    assert performance["average_task_time"] == pytest.approx(sum(task_ms) / len(task_ms) / 1000, abs=0.001)
    assert performance["success_rate"] == pytest.approx(100 * done / (done + failed), abs=0.01)

    storage = body["storage"]
    assert set(storage) == {"database_size_mb", "sessions_table_rows", "tasks_table_rows"}
    assert (storage["sessions_table_rows"], storage["tasks_table_rows"]) == (len(sessions), len(tasks))
    assert storage["database_size_mb"] > 0


def test_stats_are_served_from_a_short_lived_copy(service_factory, tmp_path) -> None:
    # One query worker: each worker keeps its own copy.
    svc = service_factory(f"sqlite:///{tmp_path / 'store.db'}", stats_cache=60.0, query_workers=1)
    direct = f"http://127.0.0.1:{svc.query_port}/api/v1/translation/stats"
    first = svc.http.get(direct).json()
    svc.post_sessions([session("s-new")])
    assert svc.flush().status_code == 200
    again = svc.http.get(direct).json()
    assert again == first and again["sessions"]["total"] == 0  # the copy, not yet the new session
    assert again["computed_at"].endswith("Z")


def test_stats_are_recomputed_after_a_flush_and_only_then(service_factory, tmp_path) -> None:
    # stats_cache = 0: never older than the last flush; one worker, so one copy.
    svc = service_factory(f"sqlite:///{tmp_path / 'store.db'}", stats_cache=0.0, query_workers=1)
    direct = f"http://127.0.0.1:{svc.query_port}/api/v1/translation/stats"
    first = svc.http.get(direct).json()
    time.sleep(0.01)
    assert svc.http.get(direct).json() == first  # nothing flushed since: the same exact answer, reused
    svc.post_sessions([session("s-new")])
    assert svc.flush().status_code == 200
    after = svc.http.get(direct).json()
    assert after["sessions"]["total"] == first["sessions"]["total"] + 1
    assert after["computed_at"] > first["computed_at"]
