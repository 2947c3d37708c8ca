"""Several-nodes drill (issue 14): three full service nodes behind HAProxy
(ops/haproxy/haproxy.cfg), a three-node MariaDB Galera cluster as the sink,
Redis for login sessions and the user cache, SeaweedFS for files: all real
servers on this machine, started here and torn down after.

1. Scaling: closed-loop writers through HAProxy against 1, 2 and 3 nodes:
   acknowledged task rows/s and statements per 1000 rows on the cluster.
2. Faults, for --seconds (120 by default) of writes and updates of the same
   keys through HAProxy, sessions created and deleted through any node, a
   login session validated every 0.2 s:
   kill -9 of service node2 (and start again), kill -9 of the Galera node
   the flushers write to (it rejoins by IST/SST), kill -9 and restart of
   Redis (append-only file). Afterwards every acknowledged task holds its
   last acknowledged version on every Galera node, no deleted session is
   back, the login session is still valid and a file uploaded through
   node1 reads back through node3.

    python -m loadtests.drill_nodes [--seconds 120] [--scale-seconds 20] [--skip-scaling]

Prints each figure and PASS/FAIL lines; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx

from testkit.galera import GaleraCluster
from testkit.nodes import Nodes, VersionWriter
from testkit.redis_server import RedisServer
from testkit.seaweed import SeaweedS3
from testkit.service import SESSIONS, TASKS, session, task, wait_for

USERS = "/api/v1/users"
USER_SESSIONS = "/api/v1/user-sessions"
FILES = "/api/v1/files"
WRITERS = 4
TASKS_PER_WRITER = 1000


def shared_toml(redis: RedisServer, seaweed: SeaweedS3) -> str:
    return (f'[files]\nurl = "{seaweed.url_with(uuid.uuid4().hex[:10])}"\n'
            f'access_key = "{seaweed.access_key}"\nsecret_key = "{seaweed.secret_key}"\n'
            f'[users]\nhash_time_cost = 1\nhash_memory_kib = 8192\n'
            f'[user_sessions]\nurl = "{redis.url}"\n[cache]\nurl = "{redis.url}"\n')


def start_nodes(folder: Path, cluster: GaleraCluster, database: str, count: int, shared: str) -> Nodes:
    nodes = Nodes(folder, cluster.url(database), count=count, extra_toml=shared, workers=1, max_delay=0.2,
                  stall_after=60.0, spool_max_bytes=512 * 1024 * 1024)
    nodes.start()
    return nodes


def writers_for(nodes: Nodes, prefix: str, pause: float) -> list[VersionWriter]:
    """One session per writer, created through node1 and flushed, so no task waits for its session."""
    ids = [f"{prefix}-s{w}" for w in range(WRITERS)]
    first = nodes.services[0]
    assert first.post_sessions([session(s) for s in ids]).status_code == 202
    assert first.flush().status_code == 200
    return [VersionWriter(nodes.proxy.url, s, [f"{s}-t{i}" for i in range(TASKS_PER_WRITER)], batch=100, pause=pause)
            for s in ids]


def cluster_statements(cluster: GaleraCluster) -> int:
    return sum(node.statements() for node in cluster.nodes)


def scaling(folder: Path, cluster: GaleraCluster, shared: str, seconds: float) -> list[dict]:
    rows = []
    for count in (1, 2, 3):
        database = f"ps_scale{count}_{uuid.uuid4().hex[:6]}"
        nodes = start_nodes(folder / f"scale{count}", cluster, database, count, shared)
        try:
            writers = writers_for(nodes, f"n{count}", pause=0.0)
            before = cluster_statements(cluster)
            for writer in writers:
                writer.start()
            time.sleep(seconds)
            for writer in writers:
                writer.stop.set()
            for writer in writers:
                writer.join(30)
            started = time.monotonic()
            nodes.flush_all()
            drain_s = time.monotonic() - started
            acked = sum(w.rows for w in writers)
            statements = cluster_statements(cluster) - before
            refused = sum(sum(w.refused.values()) for w in writers)
            rows.append({"nodes": count, "rows_s": acked / seconds, "drain_s": drain_s, "acked": acked,
                         "per_1000": 1000 * statements / max(acked, 1), "refused": refused,
                         "e2e_rows_s": acked / (seconds + drain_s)})
            print(f"  {count} node(s): {acked / seconds:8.0f} acknowledged rows/s; drained {drain_s:5.1f} s after;"
                  f" {acked / (seconds + drain_s):7.0f} rows/s end to end; {1000 * statements / max(acked, 1):5.1f}"
                  f" statements per 1000 rows (cluster); {refused} requests pushed back", flush=True)
        finally:
            nodes.stop()
    return rows


class Deleter(threading.Thread):
    """Creates a session with tasks through the proxy, updates it and at once deletes it through the proxy;
    keeps the ids whose DELETE was applied (200), and apart those only queued (202: applied once the
    database answers, and then perhaps "not found" if the session had not reached it yet)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.deleted: list[str] = []
        self.queued: list[str] = []
        self.trace: dict[str, str] = {}  # what each step answered, through which node, when
        self.other: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                sid = f"del-{n}"
                steps = []
                try:
                    for method, path, body in (
                            ("POST", SESSIONS, {"sessions": [session(sid)]}),
                            ("POST", TASKS, {"tasks": [task(f"{sid}-t{i}", sid) for i in range(20)]}),
                            # An update acknowledged just before the delete, maybe by another node: the delete
                            # must win (a write acknowledged before a delete must not bring the session back).
                            ("POST", SESSIONS, {"sessions": [session(sid, status="processing")]}),
                            ("DELETE", f"/api/v1/translation/sessions/{sid}", None)):
                        if method == "DELETE":
                            answer = http.delete(path)
                        else:
                            answer = http.post(path, json=body)
                        steps.append(f"{method} {answer.status_code} via {answer.headers.get('x-served-by')}"
                                     f" at {time.time():.3f}")
                        if path == TASKS:
                            time.sleep(0.5)  # long enough for the session to reach the database from any node
                except httpx.HTTPError as exc:
                    self.other[type(exc).__name__] = self.other.get(type(exc).__name__, 0) + 1
                    continue
                self.trace[sid] = "; ".join(steps)
                if answer.status_code == 200:
                    self.deleted.append(sid)
                elif answer.status_code == 202:
                    self.queued.append(sid)
                else:
                    self.other[str(answer.status_code)] = self.other.get(str(answer.status_code), 0) + 1
                time.sleep(0.2)


class Validator(threading.Thread):
    """Validates one login session through the proxy every 0.2 s; records when it failed."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.token = url, token
        self.failures: list[tuple[float, int]] = []
        self.checks = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self.stop.is_set():
                try:
                    status = http.post(f"{USER_SESSIONS}/validate", json={"token": self.token}).status_code
                except httpx.HTTPError:
                    status = 0
                self.checks += 1
                if status != 200:
                    self.failures.append((time.monotonic(), status))
                time.sleep(0.2)


def until(check: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    wait_for(check, timeout, "recovery", interval=0.1)
    return time.monotonic() - started


def acked_gap(writers: list[VersionWriter], since: float, seconds: float) -> float:
    """The longest stretch without an acknowledged write, sampled every 0.1 s over `seconds`."""
    longest, last, count = 0.0, time.monotonic(), sum(w.requests for w in writers)
    while time.monotonic() - since < seconds:
        time.sleep(0.1)
        now, current = time.monotonic(), sum(w.requests for w in writers)
        if current != count:
            last, count = now, current
        longest = max(longest, now - last)
    return longest


def faults(folder: Path, cluster: GaleraCluster, redis: RedisServer, shared: str, seconds: float) -> bool:
    database = f"ps_drill_{uuid.uuid4().hex[:6]}"
    nodes = start_nodes(folder / "drill", cluster, database, 3, shared)
    ok = True

    def check(passed: bool, what: str) -> None:
        nonlocal ok
        ok = ok and passed
        print(f"  {'PASS' if passed else 'FAIL'}: {what}", flush=True)

    try:
        first, third = nodes.services[0], nodes.services[2]
        proxy = httpx.Client(base_url=nodes.proxy.url, timeout=10)
        content = os.urandom(100_000)
        upload = first.http.post(FILES, params={"filename": "drill.bin"}, content=content)
        assert upload.status_code == 201, upload.text
        user = first.http.post(USERS, json={"username": "drill", "email": "drill@example.com"})
        assert user.status_code == 201, user.text
        login = first.http.post(USER_SESSIONS, json={"user_id": user.json()["user_id"]})
        assert login.status_code == 201, login.text
        writers = writers_for(nodes, "drill", pause=0.01)
        deleter = Deleter(nodes.proxy.url)
        validator = Validator(nodes.proxy.url, login.json()["token"])
        threads: list[VersionWriter | Deleter | Validator] = [*writers, deleter, validator]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        at = lambda share: started + share * seconds  # noqa: E731

        time.sleep(max(0.0, at(0.17) - time.monotonic()))
        nodes.services[1].kill()
        killed = time.monotonic()
        out_s = nodes.proxy.wait_state("node2", "DOWN")
        gap = acked_gap(writers, killed, 3)
        print(f"  service node2 killed -9: out of the pool after {out_s:.2f} s; longest stretch without an"
              f" acknowledged write {gap:.2f} s", flush=True)
        time.sleep(max(0.0, at(0.25) - time.monotonic()))
        nodes.services[1].start()
        back_s = nodes.proxy.wait_state("node2", "UP", timeout=60)
        print(f"  service node2 started again: back in the pool after {back_s:.2f} s", flush=True)

        time.sleep(max(0.0, at(0.42) - time.monotonic()))
        victim = cluster.serving(database)
        cluster.kill(victim)
        killed = time.monotonic()
        gap = acked_gap(writers, killed, 3)
        healthy = lambda: all(s.http.get("/health").json()["database"] == "healthy"  # noqa: E731
                              for s in nodes.services)
        moved_s = until(healthy, 60)
        print(f"  Galera node{victim} (the one written to) killed -9: longest stretch without an acknowledged"
              f" write {gap:.2f} s; every flusher writing to another node after {moved_s:.2f} s", flush=True)
        time.sleep(max(0.0, at(0.54) - time.monotonic()))
        rejoin_started = time.monotonic()
        cluster.start_node(victim)
        print(f"  Galera node{victim} started again: synced after {time.monotonic() - rejoin_started:.1f} s"
              f" (cluster size {cluster.size((victim + 1) % 3)})", flush=True)

        time.sleep(max(0.0, at(0.71) - time.monotonic()))
        failures_before = len(validator.failures)
        token = login.json()["token"]
        valid = lambda: proxy.post(f"{USER_SESSIONS}/validate",  # noqa: E731
                                                json={"token": token}).status_code == 200
        redis.kill()
        killed = time.monotonic()
        time.sleep(1.0)
        redis.start()
        valid_s = until(valid, 30)
        print(f"  Redis killed -9, down 1 s, started again (append-only file): the login session validates again"
              f" {valid_s:.2f} s after the restart ({len(validator.failures) - failures_before} failed"
              f" validations from the kill on)", flush=True)

        time.sleep(max(0.0, at(1.0) - time.monotonic()))
        for thread in threads:
            thread.stop.set()
        for thread in threads:
            thread.join(30)
        elapsed = time.monotonic() - started
        drained_started = time.monotonic()
        nodes.flush_all()
        drain_s = time.monotonic() - drained_started
        acked_rows = sum(w.rows for w in writers)
        print(f"  {elapsed:.0f} s of writes: {acked_rows} task rows acknowledged ({acked_rows / elapsed:.0f}/s),"
              f" drained {drain_s:.1f} s after; by node {merged(w.by_node for w in writers)};"
              f" not acknowledged {merged(w.refused for w in writers)}; deletes {len(deleter.deleted)}"
              f" applied, {len(deleter.queued)} queued (other answers {deleter.other})", flush=True)

        for node in cluster.nodes:
            lost = 0
            for writer in writers:
                stored = {r[0]: r[1] for r in node.query(
                    f"SELECT task_id, target_text FROM `{database}`.translation_tasks WHERE session_id = %s",
                    (writer.session_id,))}
                lost += len(writer.wrong(stored))
            back = [r[0] for r in node.query(
                f"SELECT session_id FROM `{database}`.translation_sessions WHERE session_id IN"
                f" ({', '.join(['%s'] * len(deleter.deleted))})", tuple(deleter.deleted))] if deleter.deleted else []
            check(lost == 0, f"Galera node{node.index}: every acknowledged task holds its last acknowledged"
                             f" version ({lost} do not)")
            check(not back, f"Galera node{node.index}: no deleted session is back ({len(back)} are)")
            for sid in back[:3]:
                print(f"    {sid}: {deleter.trace.get(sid)}")
        check(cluster.size() == 3, f"the cluster has {cluster.size()} nodes again")
        check(valid(), f"the login session is still valid ({validator.checks} checks during the drill,"
                       f" {len(validator.failures)} failed)")
        read = third.http.get(f"{FILES}/{upload.json()['file_id']}/content")
        check(read.status_code == 200 and read.content == content, "a file uploaded through node1 reads back"
                                                                   f" through node3 ({read.status_code}"
                                                                   f"{'' if read.status_code == 200 else ' ' + read.text[:200]})")
    finally:
        nodes.stop()
    return ok


def merged(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in counts:
        for key, value in part.items():
            out[key] = out.get(key, 0) + value
    return dict(sorted(out.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the fault drill")
    parser.add_argument("--scale-seconds", type=float, default=20.0, help="writes per node count")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="drill-nodes-"))
    cluster = GaleraCluster.create(3)
    redis = RedisServer(folder / "redis", persistent=True)
    seaweed = SeaweedS3(folder / "seaweed")
    try:
        started = time.monotonic()
        cluster.start()
        print(f"Galera cluster of {cluster.size()} nodes up in {time.monotonic() - started:.1f} s", flush=True)
        redis.start()
        seaweed.start()
        shared = shared_toml(redis, seaweed)
        if not args.skip_scaling:
            print(f"scaling ({args.scale_seconds:.0f} s of closed-loop writes, {WRITERS} clients, per node count):")
            scaling(folder, cluster, shared, args.scale_seconds)
        print(f"faults ({args.seconds:.0f} s):")
        ok = faults(folder, cluster, redis, shared, args.seconds)
    finally:
        seaweed.kill()
        redis.kill()
        cluster.destroy()
    print("PASS" if ok else "FAIL")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
