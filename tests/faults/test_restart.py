"""SIGTERM the whole service: it exits 0; what the flusher could not drain
stays in the spool and a new service on the same folder delivers it; with
time to drain, everything acknowledged is in the database at exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.load import Load, check_sink, flush_until_ok, health, now_us, running, spool_state
from testkit.service import Service, sink_rows


def _stored_tasks(sink_url: str, tag: str) -> int:
    return sum(1 for r in sink_rows(sink_url, "translation_tasks", "task_id") if r["task_id"].startswith(tag))


@pytest.mark.slow
def test_sigterm_leaves_spool_and_next_start_delivers(tmp_path: Path, sink_url: str) -> None:
    folder = tmp_path / "svc"
    # The flusher never drains on its own (max_delay, batch_rows) and gets no grace at stop.
    first = Service(folder, sink_url, max_delay=3600, batch_rows=100_000, shutdown_grace=0)
    with running(first):
        load = Load(first, tag="rs", threads=2, batch=250, max_tasks=5_000).start()
        load.join(120)
        assert load.failed_requests == 0, load.statuses
        code, body = health(first)
        assert body["buffer"]["total_count"] == load.acked_records + load.sessions, body
        assert first.stop() == 0, first.tail()
    waiting = spool_state(first)
    assert waiting["entries"] == load.acked_requests + 1, waiting  # + the sessions request
    assert waiting["records"] == load.acked_records + load.sessions, waiting
    assert _stored_tasks(sink_url, "rs-") == 0  # the spool really held them back

    second = Service(folder, sink_url)  # same folder and spool, normal settings
    with running(second):
        flush_until_ok(second, 120)
        counts = check_sink(sink_url, load)
        assert counts["acked_keys"] > 5_000, counts
        assert spool_state(second)["entries"] == 0
        assert second.stop() == 0, second.tail()


@pytest.mark.slow
def test_sigterm_drains_everything_before_exit(tmp_path: Path, mysql_url: str) -> None:
    """Normal settings, the load still running when SIGTERM arrives: every
    acknowledged write is in the database when the process has exited, without
    any /flush."""
    service = Service(tmp_path / "svc", mysql_url)
    with running(service):
        load = Load(service, tag="dr", threads=3, batch=500).start()
        load.wait_acked(20_000, 60)
        code = service.stop()
        exited_us = now_us()
        load.wait_attempts(20, 30)  # the load keeps trying; nothing may acknowledge now
        load.stop()
        assert code == 0, service.tail()
        assert load.acked_sent_after(exited_us) == 0, f"acknowledged after exit: {load.statuses}"
    assert spool_state(service)["entries"] == 0
    counts = check_sink(mysql_url, load)
    assert counts["acked_keys"] > 10_000, counts


@pytest.mark.slow
def test_sigterm_drains_a_large_backlog_within_grace(tmp_path: Path, sink_url: str) -> None:
    """Everything is still in the spool at SIGTERM (the flusher waits for a batch
    that never fills); shutdown_grace is enough to write it all before exit."""
    service = Service(tmp_path / "svc", sink_url, max_delay=3600, batch_rows=100_000, shutdown_grace=30)
    with running(service):
        load = Load(service, tag="bl", threads=2, batch=500, max_tasks=10_000).start()
        load.join(120)
        assert load.failed_requests == 0, load.statuses
        assert spool_state(service)["records"] == load.acked_records + load.sessions
        assert service.stop() == 0, service.tail()
    assert spool_state(service)["entries"] == 0
    counts = check_sink(sink_url, load)
    assert counts["acked_keys"] > 10_000, counts


@pytest.mark.slow
def test_kill_9_whole_service_then_restart(tmp_path: Path, mysql_url: str) -> None:
    """SIGKILL to every process of the service during a write load (no chance
    to drain): a new service on the same folder delivers every write that got 202."""
    folder = tmp_path / "svc"
    first = Service(folder, mysql_url)
    with running(first):
        load = Load(first, tag="k9", threads=3, batch=500, session_updates=0.5).start()
        load.wait_acked(20_000, 60)
        first.kill()
        load.stop()
    assert spool_state(first)["records"] > 0  # killed with work still in the spool

    second = Service(folder, mysql_url)
    with running(second):
        flush_until_ok(second, 120)
        counts = check_sink(mysql_url, load)
        assert counts["acked_keys"] > 10_000 and counts["session_writes_acked"] > 20, counts
