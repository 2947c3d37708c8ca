"""Two nodes on one MariaDB whose clocks differ: node b runs 5 s behind
(libfaketime preloaded into every process of it; the monotonic clock is
left alone). What README "Running on several machines" says is what
happens:
- a client that sends updated_at gets the last write it sent, whichever
  node carried each one;
- without updated_at, versions are the nodes' acceptance times: a later
  write through the node whose clock is behind loses to an earlier one;
- a delete is ordered against other nodes' writes by the same clocks: a
  write accepted by the lagging node within its lag after a delete counts
  as older than the delete and is dropped. Keep the clocks in sync."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.nodes import version_time
from testkit.service import Service, session, sink_rows, task

FAKETIME = next((p for p in ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                             "/usr/lib/faketime/libfaketimeMT.so.1") if Path(p).exists()), None)
LAG_S = 5

pytestmark = pytest.mark.skipif(FAKETIME is None, reason="libfaketime is not installed (apt-get install faketime)")


@pytest.fixture
def nodes(tmp_path: Path, mysql_url: str) -> Iterator[tuple[Service, Service]]:
    a = Service(tmp_path / "a", mysql_url, host="127.0.0.1")
    b = Service(tmp_path / "b", mysql_url, host="127.0.0.2")
    assert FAKETIME is not None
    b.env = {"LD_PRELOAD": FAKETIME, "FAKETIME": f"-{LAG_S}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    try:
        a.start(wait=False)
        b.start(wait=False)
        a.wait_ready()
        b.wait_ready()
        yield a, b
    finally:
        a.kill()
        b.kill()


def text_of(sink_url: str, task_id: str) -> str | None:
    rows = [r for r in sink_rows(sink_url, "translation_tasks", "task_id, target_text") if r["task_id"] == task_id]
    return rows[0]["target_text"] if rows else None


def test_what_differing_clocks_do_to_versions_and_deletes(nodes: tuple[Service, Service], mysql_url: str) -> None:
    a, b = nodes
    assert a.post_sessions([session("clock")]).status_code == 202
    assert a.flush().status_code == 200
    # b's clock really is behind: the created_at of what it accepted
    assert b.post_tasks([task("probe", "clock")]).status_code == 202 and b.flush().status_code == 200
    probe = b.http.get("/api/v1/translation/tasks/probe").json()
    lag = time.time() - time.mktime(time.strptime(probe["created_at"][:19], "%Y-%m-%dT%H:%M:%S")) + time.timezone
    assert LAG_S - 1 < lag < LAG_S + 2, probe["created_at"]

    # With updated_at: the last write sent wins, through either node, in any flush order.
    for version, node in enumerate((a, b, a, b, a)):
        answer = node.post_tasks([task("sent", "clock", target_text=f"v{version}", updated_at=version_time(version))])
        assert answer.status_code == 202
    assert b.flush().status_code == 200 and a.flush().status_code == 200
    assert text_of(mysql_url, "sent") == "v4"

    # Without updated_at: b's later write carries b's earlier time and loses.
    assert a.post_tasks([task("timed", "clock", target_text="first, through a")]).status_code == 202
    assert a.flush().status_code == 200
    assert b.post_tasks([task("timed", "clock", target_text="then, through b")]).status_code == 202
    assert b.flush().status_code == 200
    assert text_of(mysql_url, "timed") == "first, through a"

    # A delete through a, then a new session of the same id through b within b's lag: dropped as older.
    deleted = a.http.delete("/api/v1/translation/sessions/clock")
    assert deleted.status_code == 200, deleted.text
    assert b.post_sessions([session("clock")]).status_code == 202
    assert b.flush().status_code == 200
    assert b.http.get("/api/v1/translation/sessions/clock").status_code == 404
