"""GET /health in each state an operator meets, on both ports: healthy;
degraded while the database is stopped (still 200, writes still accepted,
answered in milliseconds); healthy again once the database is back; and
unhealthy (503) while the spool is full, though the database is fine.
(tests/e2e/test_backpressure.py covers the writes side of a full spool.)"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from testkit.mariadb import PrivateMariaDB
from testkit.service import Service, session, task, wait_for

HEALTH_CALLS = 20
HEALTH_BUDGET_S = 0.2
BODY_KEYS = {"status", "database", "buffer", "uptime_seconds", "version"}
BUFFER_KEYS = {"sessions_count", "tasks_count", "total_count", "capacity", "usage_percent", "last_flush"}


def _health(service: Service, port: int) -> tuple[int, dict[str, Any]]:
    answer = service.http.get(f"http://127.0.0.1:{port}/health")
    return answer.status_code, answer.json()


def _both(service: Service) -> list[tuple[int, dict[str, Any]]]:
    return [_health(service, port) for port in (service.ingest_port, service.query_port)]


def _state(status: int, body: dict[str, Any]) -> tuple[int, str, str]:
    return status, body["status"], body["database"]


def _wait_state(service: Service, expected: tuple[int, str, str], timeout: float) -> list[dict[str, Any]]:
    """Poll both ports until both answer (code, status, database) == expected."""
    def reached() -> list[dict[str, Any]]:
        answers = _both(service)
        return [body for _, body in answers] if all(_state(*a) == expected for a in answers) else []
    return wait_for(reached, timeout, f"/health on both ports to be {expected}", interval=0.1)


def _timed_health_calls(service: Service) -> list[float]:
    seconds = []
    for _ in range(HEALTH_CALLS):
        started = time.perf_counter()
        answer = service.http.get("/health")
        seconds.append(time.perf_counter() - started)
        assert _state(answer.status_code, answer.json()) == (200, "degraded", "unhealthy"), answer.text
    return seconds


def test_health_through_a_database_stop_and_restart(service_factory, private_db: PrivateMariaDB) -> None:
    service = service_factory(private_db.url("ps_health"), flush_timeout=3.0)
    for body in _wait_state(service, (200, "healthy", "healthy"), 30):
        assert BODY_KEYS <= body.keys() and BUFFER_KEYS <= body["buffer"].keys(), body
    assert service.post_sessions([session("s-1")]).status_code == 202
    assert service.flush().status_code == 200

    private_db.stop()  # clean shutdown, with nothing waiting: only the flusher's idle ping can notice
    for body in _wait_state(service, (200, "degraded", "unhealthy"), 20):
        assert body["flusher"]["alive"] and body["flusher"]["sink_error"], body
    for i in range(2):  # writes are still accepted
        assert service.post_tasks([task(f"t-down-{i}", "s-1")]).status_code == 202

    seconds = _timed_health_calls(service)
    median_ms = statistics.median(seconds) * 1000
    print(f"\n/health while the database is stopped: median {median_ms:.1f} ms, max {max(seconds) * 1000:.1f} ms")
    assert max(seconds) < HEALTH_BUDGET_S, [round(s * 1000, 1) for s in seconds]
    _, body = _health(service, service.ingest_port)
    assert body["buffer"]["tasks_count"] == 2 and body["buffer"]["oldest_age_seconds"] > 0, body

    private_db.start()  # same folder, same port
    _wait_state(service, (200, "healthy", "healthy"), 30)
    assert service.flush().status_code == 200
    for _, body in _both(service):
        assert body["buffer"]["total_count"] == 0 and body["buffer"]["last_flush"], body


def test_health_is_unhealthy_while_the_spool_is_full(service_factory, tmp_path: Path) -> None:
    service = service_factory(f"sqlite:///{tmp_path / 'store.db'}", spool_max_bytes=1024 * 1024,
                              max_delay=3600, batch_rows=100_000)
    assert service.post_sessions([session("s-1")]).status_code == 202
    for i in range(40):
        batch = [task(f"t-{i}-{j}", "s-1", source_text="字" * 2000) for j in range(10)]  # ~60 KB
        if service.post_tasks(batch).status_code == 503:
            break
    else:
        pytest.fail("the spool never filled")

    for status, body in _both(service):
        # The spool is the problem, not the database: the two fields say so.
        assert _state(status, body) == (503, "unhealthy", "healthy"), body
        assert body["buffer"]["usage_percent"] > 80 and body["buffer"]["capacity"] == 1024 * 1024, body
    assert "persistence_spool_refusing 1.0" in service.http.get("/metrics").text

    assert service.flush().status_code == 200
    _wait_state(service, (200, "healthy", "healthy"), 10)
    assert "persistence_spool_refusing 0.0" in service.http.get("/metrics").text
