"""kill -9 the flusher while it drains a large backlog, three times; the
supervisor restarts it each time and nothing acknowledged is lost or stale."""

from __future__ import annotations

import os
import signal
import time

import pytest

from testkit.load import Load, check_sink, flush_until_ok, health, only_flusher, pause_flusher, spool_state
from testkit.service import wait_for

# Kill #n lands this long after the flusher was seen committing a cycle, so the
# kills hit different points of the next cycle (read, sink write, trim).
KILL_DELAYS = (0.0, 0.03, 0.15)
KILLS = len(KILL_DELAYS)
BACKLOG_RECORDS = 2_000  # "mid-drain": at least this many records still wait when the kill lands


@pytest.mark.slow
def test_kill_flusher_mid_drain(service_factory, sink_url: str) -> None:
    service = service_factory(sink_url)
    bulk = Load(service, tag="bulk", threads=3, batch=500, max_tasks=20_000)
    trickle = Load(service, tag="trickle", threads=1, batch=100, pause=0.05)

    # Build a backlog that needs many drain cycles: the flusher is paused (SIGSTOP)
    # while ~60k writes are acknowledged, then resumed.
    flusher = pause_flusher(service)
    try:
        bulk.start().join(180)
    finally:
        os.kill(flusher, signal.SIGCONT)
    assert bulk.failed_requests == 0, bulk.statuses
    assert spool_state(service)["records"] >= 50_000
    trickle.start()

    kills: list[tuple[int, dict[str, int]]] = []
    for delay in KILL_DELAYS:
        before = spool_state(service)["flushed_seq"]

        def draining() -> dict | None:
            state = spool_state(service)
            assert state["records"] >= BACKLOG_RECORDS, (
                f"the backlog drained before kill #{len(kills) + 1} could land: {state}")
            return state if state["flushed_seq"] > before else None

        wait_for(draining, 60, f"flusher pid {flusher} to commit a drain cycle", interval=0.01)
        time.sleep(delay)  # timing variety only; correctness never waits on a sleep
        state = spool_state(service)
        os.kill(flusher, signal.SIGKILL)
        assert state["records"] >= BACKLOG_RECORDS, f"kill landed after the backlog drained: {state}"
        kills.append((flusher, state))
        flusher = only_flusher(service, not_pid=flusher)  # restarted by the supervisor

    assert len({pid for pid, _ in kills} | {flusher}) == KILLS + 1, kills
    trickle.stop()
    flush_until_ok(service, 180)
    result = check_sink(sink_url, bulk), check_sink(sink_url, trickle)
    assert result[0]["acked_keys"] > 30_000 and result[1]["acked_keys"] > 0, result
    assert not bulk.unexpected and not trickle.unexpected, bulk.unexpected + trickle.unexpected
    code, body = health(service)
    assert code == 200 and body["database"] == "healthy" and body["flusher"]["alive"], body
    assert body["buffer"]["dead_letters"] == 0 and body["buffer"]["held_orphans"] == 0, body
    assert flusher in service.children()["flusher"], "the restarted flusher died"
