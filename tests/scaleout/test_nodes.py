"""Three full service nodes (127.0.0.1, .2, .3, each its own spool) behind
HAProxy with the shipped ops/haproxy/haproxy.cfg, sharing one MariaDB, one
Redis and one S3 store: clients use one URL; a node killed with -9 leaves
the pool and loses nothing it acknowledged; a node whose /health answers
503 leaves the pool until it recovers; files, login sessions and user
changes made through one node are seen through every other at once."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit import haproxy
from testkit.nodes import Nodes, VersionWriter, version_time
from testkit.seaweed import SeaweedS3
from testkit.service import TASKS, session, sink_rows, task, wait_for

pytestmark = pytest.mark.skipif(not haproxy.available(), reason="haproxy is not installed")

USERS = "/api/v1/users"
USER_SESSIONS = "/api/v1/user-sessions"
FILES = "/api/v1/files"


@pytest.fixture
def nodes(tmp_path: Path, mysql_url: str, shared_redis: str, seaweed: SeaweedS3) -> Iterator[Nodes]:
    shared = (f'[files]\nurl = "s3://{seaweed.bucket}/n{uuid.uuid4().hex[:10]}?endpoint={seaweed.endpoint}"\n'
              f'access_key = "{seaweed.access_key}"\nsecret_key = "{seaweed.secret_key}"\n'
              f'[users]\nhash_time_cost = 1\nhash_memory_kib = 8192\n'
              f'[user_sessions]\nurl = "{shared_redis}"\n[cache]\nurl = "{shared_redis}"\n')
    group = Nodes(tmp_path, mysql_url, extra_toml=shared, stall_after=2.0, workers=1, max_delay=0.05)
    try:
        group.start()
        yield group
    finally:
        group.stop()


def stored_texts(sink_url: str, session_id: str) -> dict[str, str]:
    return {r["task_id"]: r["target_text"] for r in sink_rows(sink_url, "translation_tasks", "task_id, session_id, "
                                                              "target_text") if r["session_id"] == session_id}


def test_one_url_spreads_writes_and_a_node_killed_9_loses_nothing(nodes: Nodes, mysql_url: str) -> None:
    first = nodes.services[0]
    assert first.post_sessions([session("spread")]).status_code == 202
    assert first.flush().status_code == 200
    writer = VersionWriter(nodes.proxy.url, "spread", [f"t-{i}" for i in range(600)], batch=50, pause=0.005)
    writer.start()
    try:
        wait_for(lambda: writer.requests > 60, 30, "writes through the proxy")
        victim = nodes.services[1]
        victim.kill()  # kill -9 of every process of node2, its spool holding what it acknowledged
        killed = time.monotonic()
        nodes.proxy.wait_state("node2", "DOWN")
        out_after = time.monotonic() - killed
        before = writer.requests
        wait_for(lambda: writer.requests > before + 40, 20, "writes to go on through the other nodes")
        victim.start()  # the same folder and spool: what it acknowledged is flushed now
        back_after = nodes.proxy.wait_state("node2", "UP")
        before = writer.requests
        wait_for(lambda: writer.requests > before + 40, 20, "writes after node2 came back")
    finally:
        writer.stop.set()
        writer.join(30)
    nodes.flush_all()
    served = {name: n for name, n in writer.by_node.items()}
    assert set(served) == {"node1", "node2", "node3"}, f"every node took writes: {served}"
    wrong = writer.wrong(stored_texts(mysql_url, "spread"))
    assert not wrong, f"{len(wrong)} tasks not at their last acknowledged version: {list(wrong.items())[:3]}"
    # Only requests caught on the killed node may fail; the proxy sends the rest elsewhere.
    assert sum(writer.refused.values()) <= 20, writer.refused
    assert out_after < 5 and back_after < 10, (out_after, back_after)


def test_a_node_whose_health_answers_503_leaves_the_pool_until_it_recovers(nodes: Nodes, mysql_url: str) -> None:
    third = nodes.services[2]
    flusher = third.children()["flusher"][0]
    os.kill(flusher, signal.SIGSTOP)  # node3 accepts writes but cannot drain them: /health says stalled
    try:
        assert third.post_sessions([session("held-on-3")]).status_code == 202
        wait_for(lambda: third.http.get("/health").status_code == 503, 15, "node3 to report the stall")
        nodes.proxy.wait_state("node3", "DOWN")
        with nodes.client() as client:
            served = set()
            for i in range(30):
                answer = client.post(TASKS, json={"tasks": [task(f"p-{i}", "held-on-3")]})
                assert answer.status_code == 202, answer.text
                served.add(answer.headers["x-served-by"])
        assert "node3" not in served and served, served
    finally:
        os.kill(flusher, signal.SIGCONT)
    nodes.proxy.wait_state("node3", "UP", timeout=20)
    # The tasks went through node1 and node2 before their session (on node3) reached the database: those
    # nodes held them as orphans, and write them once the session is there.
    assert third.flush().status_code == 200
    nodes.flush_all()
    wait_for(lambda: len(stored_texts(mysql_url, "held-on-3")) == 30, 30, "the held tasks to be written")


def test_files_login_sessions_and_user_changes_cross_nodes_at_once(nodes: Nodes) -> None:
    a, b = (httpx.Client(base_url=f"http://{s.host}:{s.ingest_port}", timeout=30) for s in nodes.services[:2])
    with a, b:
        data = os.urandom(200_000)
        uploaded = a.post(FILES, params={"filename": "report.xlsx"}, content=data,
                          headers={"content-type": "application/octet-stream"})
        assert uploaded.status_code == 201, uploaded.text
        downloaded = b.get(f"{FILES}/{uploaded.json()['file_id']}/content")
        assert downloaded.status_code == 200 and downloaded.content == data

        user = a.post(USERS, json={"username": "ann", "email": "ann@example.com", "password": "correct horse"})
        assert user.status_code == 201, user.text
        user_id = user.json()["user_id"]
        made = a.post(USER_SESSIONS, json={"user_id": user_id})
        assert made.status_code == 201, made.text
        token = made.json()["token"]
        assert b.post(f"{USER_SESSIONS}/validate", json={"token": token}).status_code == 200
        assert b.post(f"{USER_SESSIONS}/revoke", json={"token": token}).status_code == 200
        assert a.post(f"{USER_SESSIONS}/validate", json={"token": token}).status_code == 401  # at once, no wait

        # A user read cached on A; disabled through B; A refuses the user's new session at once.
        assert a.get(f"{USERS}/{user_id}").json()["username"] == "ann"
        other = a.post(USER_SESSIONS, json={"user_id": user_id})
        assert other.status_code == 201
        changed = b.patch(f"{USERS}/{user_id}", json={"status": "disabled"})
        assert changed.status_code == 200, changed.text
        assert a.get(f"{USERS}/{user_id}").json()["status"] == "disabled"
        assert a.post(f"{USER_SESSIONS}/validate", json={"token": other.json()["token"]}).status_code == 401


def test_a_delete_through_one_node_wins_over_older_writes_another_node_still_holds(
        nodes: Nodes, mysql_url: str) -> None:
    first, second = nodes.services[0], nodes.services[1]
    assert first.post_sessions([session("gone")]).status_code == 202
    assert first.post_tasks([task(f"gone-{i}", "gone") for i in range(5)]).status_code == 202
    assert first.flush().status_code == 200
    flusher = second.children()["flusher"][0]
    os.kill(flusher, signal.SIGSTOP)  # node2 acknowledges but cannot drain yet: its writes wait in its spool
    try:
        assert second.post_sessions([session("gone", status="processing")]).status_code == 202
        assert second.post_tasks([task(f"gone-{i}", "gone", status="completed") for i in range(8)]).status_code == 202
        deleted = first.http.delete("/api/v1/translation/sessions/gone")
        assert deleted.status_code == 200 and deleted.json()["deleted_tasks"] == 5, deleted.text
    finally:
        os.kill(flusher, signal.SIGCONT)
    flushed = second.flush()  # the older writes reach the database after the delete
    assert flushed.status_code == 200, flushed.text
    back = [r for r in sink_rows(mysql_url, "translation_sessions", "session_id, status")
            if r["session_id"] == "gone"]
    assert back == [], f"{back}\nnode1:\n{first.tail(15)}\nnode2:\n{second.tail(15)}"
    assert stored_texts(mysql_url, "gone") == {}, f"node2:\n{second.tail(15)}"
    # A write accepted after the delete is a new session of the same id.
    assert second.post_sessions([session("gone")]).status_code == 202
    assert second.flush().status_code == 200
    again = second.http.get("/api/v1/translation/sessions/gone")
    assert again.status_code == 200, again.text


def test_one_updated_at_through_two_nodes_ends_with_the_higher_nodes_write_whichever_flushes_last(
        nodes: Nodes, mysql_url: str) -> None:
    low, high = nodes.services[0], nodes.services[1]  # sink.node_id 1 and 2
    assert high.post_sessions([session("tie")]).status_code == 202
    at = version_time(7)
    for task_id, order in (("tie-a", (high, low)), ("tie-b", (low, high))):
        for service in order:  # each write flushed before the next node's: the flush order is the one given
            answer = service.post_tasks([task(task_id, "tie", target_text=f"via {service.host}", updated_at=at)])
            assert answer.status_code == 202, answer.text
            assert service.flush().status_code == 200
    assert stored_texts(mysql_url, "tie") == {"tie-a": "via 127.0.0.2", "tie-b": "via 127.0.0.2"}
    for service in (low, high):  # what each node reads back
        read = service.http.get("/api/v1/translation/tasks/tie-a")
        assert read.status_code == 200 and read.json()["target_text"] == "via 127.0.0.2", read.text
