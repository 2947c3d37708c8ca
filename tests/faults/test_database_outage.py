"""The sink's MariaDB stops cleanly for ~15 s during a write load and comes
back on the same folder and port: writes keep getting 202, /health says
degraded (200) with the database unhealthy, /flush answers 503 within
flush_timeout, and after the restart everything acknowledged is stored."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtests.mariadb_server import PrivateMariaDB
from tests.faults.load import Load, check_sink, flush_until_ok, health, spool_state
from tests.harness import wait_for

FLUSH_TIMEOUT = 3.0
OUTAGE_S = 15.0


@pytest.fixture
def private_db(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    db = PrivateMariaDB(tmp_path / "mariadb", options={"innodb_buffer_pool_size": "128M",
                                                        "innodb_log_file_size": "48M"})
    db.start()
    yield db
    db.kill()


@pytest.mark.slow
def test_database_outage(service_factory, private_db: PrivateMariaDB) -> None:
    url = private_db.url("ps_outage")
    service = service_factory(url, flush_timeout=FLUSH_TIMEOUT)
    load = Load(service, tag="out", threads=2, batch=100, pause=0.1).start()
    load.wait_acked(3_000, 60)
    flush_until_ok(service, 60)

    private_db.stop()  # SIGTERM: a clean shutdown, as an operator's restart
    down_since = time.monotonic()
    acked_at_stop, failed_at_stop = load.acked_records, load.failed_requests

    def degraded() -> dict | None:
        code, body = health(service)
        return body if (code, body["status"], body["database"]) == (200, "degraded", "unhealthy") else None

    body = wait_for(degraded, OUTAGE_S, "/health to say degraded, database unhealthy")
    assert body["flusher"]["alive"] and body["flusher"]["sink_error"], body

    started = time.monotonic()
    answer = service.flush()
    took = time.monotonic() - started
    assert answer.status_code == 503, answer.text
    assert answer.json()["status"] == "error" and answer.headers.get("retry-after"), answer.text
    assert FLUSH_TIMEOUT - 0.1 <= took <= FLUSH_TIMEOUT + 5, f"/flush answered after {took:.1f} s"

    # Keep the database down for the whole outage while the load goes on.
    wait_for(lambda: time.monotonic() - down_since >= OUTAGE_S, OUTAGE_S + 5, "the outage to last")
    code, body = health(service)
    assert (code, body["status"], body["database"]) == (200, "degraded", "unhealthy"), body
    assert load.failed_requests == failed_at_stop, f"writes refused during the outage: {load.statuses}"
    assert load.acked_records >= acked_at_stop + 2_000, "writes stopped being acknowledged"
    assert spool_state(service)["records"] > 0  # the writes wait in the spool

    print("restart", time.monotonic() - down_since, load.acked_records, spool_state(service))
    private_db.start()  # same folder, same port
    print("started", time.monotonic() - down_since)
    flush_until_ok(service, 120)
    wait_for(lambda: health(service)[1]["status"] == "healthy", 30, "/health to say healthy again")
    print("flushed", time.monotonic() - down_since)
    load.stop()
    assert not load.unexpected and load.failed_requests == 0, load.statuses
    flush_until_ok(service, 120)
    counts = check_sink(url, load)
    assert counts["acked_keys"] > 3_000, counts
    code, body = health(service)
    assert body["buffer"]["dead_letters"] == 0 and body["buffer"]["total_count"] == 0, body


def test_flush_timeout_answer_is_prompt_and_honest(service_factory, private_db: PrivateMariaDB) -> None:
    """/flush with the database down: 503 with counters, and nothing was written."""
    url = private_db.url("ps_outage_flush")
    service = service_factory(url, flush_timeout=FLUSH_TIMEOUT)
    load = Load(service, tag="of", threads=1, batch=100, max_tasks=500)
    load.create_sessions()
    flush_until_ok(service, 60)
    private_db.stop()
    load.start().join(60)
    assert load.acked_records == 500, load.statuses
    answer = service.flush()
    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert body["tasks_written"] == 0 and body["error_code"] == "FLUSH_TIMEOUT", body
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{private_db.port}", timeout=1)  # really down
    private_db.start()
    answer = flush_until_ok(service, 120)
    check_sink(url, load)
