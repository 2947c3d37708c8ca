"""kill -9 granian ingest workers during a write load: granian respawns them,
the service keeps answering, and every acknowledged write reaches the sink
(requests in flight on a killed worker fail on the client: unacknowledged)."""

from __future__ import annotations

import os
import signal

import pytest

from tests.faults.load import Load, check_sink, flush_until_ok, granian_workers, health
from tests.harness import wait_for

WORKERS = 2
KILLS = 4


@pytest.mark.slow
def test_kill_ingest_worker(service_factory, mysql_url: str) -> None:
    service = service_factory(mysql_url, workers=WORKERS)
    load = Load(service, tag="kw", threads=4, batch=200, pause=0.005).start()
    load.wait_acked(5_000, 60)
    original = granian_workers(service)
    assert len(original) == WORKERS, service.children()

    # Each kill takes the worker that was not just respawned, so while it is down
    # only the freshly respawned one can answer.
    fresh: set[int] = set()
    killed: list[int] = []
    for _ in range(KILLS):
        workers = set(granian_workers(service))
        victim = min(workers - fresh)
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)

        def respawned() -> set[int] | None:
            now = set(granian_workers(service))
            return now - workers if len(now) == WORKERS and victim not in now else None

        fresh = wait_for(respawned, 60, f"granian to respawn worker {victim}")
        acked = load.acked_records
        load.wait_acked(acked + 8_000, 60)  # the service keeps answering

    load.stop()
    assert set(granian_workers(service)).isdisjoint(original)
    assert not load.unexpected, load.unexpected  # failures are broken connections or 503, never 500
    flush_until_ok(service, 120)
    counts = check_sink(mysql_url, load)
    assert counts["acked_keys"] > 20_000, counts
    code, body = health(service)
    assert code == 200 and body["status"] == "healthy", body
