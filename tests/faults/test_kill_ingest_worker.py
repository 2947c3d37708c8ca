"""kill -9 granian ingest workers during a write load: granian respawns them,
the service keeps answering, and every acknowledged write reaches the sink
(requests in flight on a killed worker fail on the client: unacknowledged)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from testkit.load import (Load, check_sink, flush_until_ok, granian_main, granian_workers, health,
                               is_alive, now_us, running)
from testkit.service import Service, wait_for

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


@pytest.mark.slow
def test_kill_granian_main_process(tmp_path: Path, mysql_url: str) -> None:
    """kill -9 the granian main process of ingest: the supervisor restarts
    ingest, and the dead instance's workers must not live on outside its
    control: after SIGTERM nothing answers on the port any more, and every
    write that got 202 is in the database at exit."""
    service = Service(tmp_path / "svc", mysql_url, workers=WORKERS, shutdown_grace=5)
    with running(service):
        load = Load(service, tag="km", threads=2, batch=100, pause=0.01).start()
        load.wait_acked(2_000, 60)
        old_workers = granian_workers(service)
        main = granian_main(service)
        os.kill(main, signal.SIGKILL)
        wait_for(lambda: granian_main(service) not in (0, main) and len(granian_workers(service)) == WORKERS,
                 60, "the supervisor to restart ingest")
        load.wait_acked(load.acked_records + 2_000, 60)  # the service keeps answering

        assert service.stop() == 0, service.tail()
        exited_us = now_us()
        load.wait_attempts(20, 30)  # the load keeps trying; nothing may acknowledge now
        load.stop()
        leftovers = [pid for pid in old_workers if is_alive(pid)]
        late = load.acked_sent_after(exited_us)
    assert not leftovers and late == 0, (
        f"after the service exited, workers {leftovers} of the killed granian instance still run "
        f"and acknowledged {late} more records ({load.statuses})")
    check_sink(mysql_url, load)

