"""kill -9 the flusher while it drains audit events, and have clients retry
batches: every acknowledged event is stored exactly once (the first write of
its event_id), and the hash chain over them verifies."""

from __future__ import annotations

import os
import signal
import time

import pytest

from testkit.load import flush_until_ok, only_flusher, pause_flusher, spool_state
from testkit.service import sink_rows, wait_for

BATCH = "/api/v1/audit/events/batch"
BATCHES = 40
PER_BATCH = 500


@pytest.mark.slow
def test_replayed_and_retried_events_are_stored_once(service_factory, sink_url: str) -> None:
    service = service_factory(sink_url, batch_rows=1000)
    first_message: dict[str, str] = {}
    flusher = pause_flusher(service)  # a backlog that needs many drain cycles
    try:
        for b in range(BATCHES):
            # Each batch repeats half of the previous one (a client retrying), with other messages.
            ids = [f"ev-{b * PER_BATCH // 2 + i:06d}" for i in range(PER_BATCH)]
            events = [{"event_id": i, "actor_id": f"actor-{b % 3}", "action": "task.update",
                       "resource_type": "task", "outcome": "success", "message": f"batch-{b:03d} 翻译 {i}"} for i in ids]
            answer = service.post(BATCH, {"events": events})
            assert answer.status_code == 202, answer.text
            assert answer.json()["event_ids"] == ids
            for e in events:
                first_message.setdefault(e["event_id"], e["message"])
    finally:
        os.kill(flusher, signal.SIGCONT)

    for delay in (0.0, 0.05):
        before = spool_state(service)["flushed_seq"]
        wait_for(lambda: spool_state(service)["flushed_seq"] > before, 60, "a drain cycle to commit", interval=0.01)
        time.sleep(delay)
        assert spool_state(service)["records"] > 0, "the backlog drained before the kill"
        os.kill(flusher, signal.SIGKILL)
        flusher = only_flusher(service, not_pid=flusher)  # restarted by the supervisor

    flush_until_ok(service, 120)
    rows = sink_rows(sink_url, "audit_events", "event_id, message, seq")
    assert len(rows) == len(first_message)
    assert {r["event_id"]: r["message"] for r in rows} == first_message
    assert sorted(r["seq"] for r in rows) == list(range(1, len(rows) + 1))  # one chain, no gaps, no repeats
    verify = service.http.get("/api/v1/audit/verify").json()
    assert verify == {"status": "ok", "checked": len(first_message), "first_broken_event_id": None,
                      "detail": None}, verify
    search = service.http.get("/api/v1/audit/events", params={"q": "batch-007 翻译", "limit": 1000}).json()["items"]
    assert {e["event_id"] for e in search} == {i for i, m in first_message.items() if m.startswith("batch-007 ")}
