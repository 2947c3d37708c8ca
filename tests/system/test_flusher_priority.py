"""flush.nice: the flusher yields the CPU to ingest. Every thread of the
flusher (its writer threads too: on Linux the nice value is per thread) runs
that much nicer than the service; ingest and query do not."""

from __future__ import annotations

import os

import pytest

from testkit.service import session, task, wait_for


def _nice_values(pid: int) -> set[int]:
    return {os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.parametrize("nice", [0, 7])
def test_every_flusher_thread_runs_at_flush_nice(service_factory, mysql_url: str, nice: int) -> None:
    svc = service_factory(mysql_url, flush_nice=nice)
    # Two writers write a batch of more than batch_rows rows: their threads exist when it is flushed.
    tasks = [task(f"t-{i:05d}", "s-1") for i in range(2500)]
    assert svc.post_sessions([session("s-1")]).status_code == 202
    for start in range(0, len(tasks), 500):
        assert svc.post_tasks(tasks[start:start + 500]).status_code == 202
    assert svc.flush().status_code == 200
    base = os.getpriority(os.PRIO_PROCESS, svc.proc.pid)
    roles = wait_for(lambda: (r := svc.children()) and all(r.values()) and r, 10, "the three roles")
    [flusher] = roles["flusher"]
    assert len(os.listdir(f"/proc/{flusher}/task")) >= 2
    assert _nice_values(flusher) == {min(19, base + nice)}
    for pid in roles["ingest"] + roles["query"]:
        assert _nice_values(pid) == {base}, pid
