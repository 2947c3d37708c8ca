"""Users benchmark (Phase 3): login-session validation on the embedded
SQLite session store and on Redis side by side, user reads by id with a warm
cache, and password checks at the shipped Argon2id defaults. SQLite sink,
two query workers; PASS/FAIL per goal.

    cd /work/main && .venv/bin/python -m loadtests.bench_users [--quick]

1. POST /api/v1/user-sessions/validate {"token"} on each session store
   (sqlite:///data/sessions.db, then redis://127.0.0.1:6379/13, FLUSHDB'd
   before and after), through port 8001 (the ingest relay) and directly to
   the query port 8002 (where a load balancer may route): (a) closed loop,
   --connections keep-alive connections as fast as answers come: p50/p99
   and validations/s; (b) open loop at --rate requests/s on a fixed
   schedule, latency counted from the scheduled send time (no coordinated
   omission): p50/p99. Goals: p99 < 5 ms (judged open loop: p99 at
   saturation is queueing) and >= 3,000 validations/s (closed loop).
2. GET /api/v1/users/{id} closed loop with the user cache warm, via 8001 and
   8002: p50/p99, reads/s and the hit ratio from the /metrics counters
   persistence_user_cache_total{result="hit"|"miss"} (delta over the phase).
3. POST /api/v1/users/authenticate {"login","password"} (right passwords)
   closed loop at the shipped Argon2id defaults ([users] is not overridden):
   logins/s, p50/p99, memory per hash (hash_memory_kib) and the per-process
   peak (hash_threads x that), plus the query workers' VmHWM.

The load client is loadtests.loadgen.RawHttp (raw keep-alive sockets, one
thread per connection) in --procs forked processes so it costs little CPU;
the client and the service share the machine's 2 cores. Each phase lasts
--seconds (--quick: 3). CPU per role (from /proc, % of one core) and the
machine's load average are printed per phase.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import resource
import shutil
import signal
import socket
import tempfile
import threading
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec

from loadtests.loadgen import RawHttp
from loadtests.procstat import CpuWindow, roles_of, status_kib, wait_quiet
from testkit.procs import descendants
from testkit.service import Service

HOST = "127.0.0.1"
REDIS_DB = 13
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
VALIDATE = "/api/v1/user-sessions/validate"
USERS = "/api/v1/users"
P99_GOAL_MS = 5.0
RATE_GOAL = 3000.0
CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--connections", type=int, default=12, help="closed-loop connections (validate, reads)")
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop validations/s")
    parser.add_argument("--auth-connections", type=int, default=4, help="closed-loop connections (authenticate)")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--wait-quiet", type=float, default=20.0,
                        help="wait at most this long before each store for other jobs to leave the machine idle")
    parser.add_argument("--quick", action="store_true", help="3 s phases, fewer sessions")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.sessions = 3.0, 200
        args.wait_quiet = min(args.wait_quiet, 5.0)
    return args


# -- the load client ---------------------------------------------------------------


class Load(msgspec.Struct, frozen=True):
    port: int
    requests: list[tuple[str, str, bytes]]  # (method, path, body), cycled
    connections: int
    duration: float
    rate: float = 0.0  # requests/s over all connections; 0 = closed loop
    expect: int = 200


class Tally(msgspec.Struct):
    latencies_ms: list[float] = []
    in_window: int = 0
    statuses: dict[str, int] = {}
    errors: list[str] = []
    cpu_s: float = 0.0
    late_ms: float = 0.0


def _connection(load: Load, conn_index: int, conns_total: int, start: float, out: Tally, lock: threading.Lock) -> None:
    conn = RawHttp(HOST, load.port, timeout=30)
    heads = {(m, p, len(b)): conn.head(m, p, len(b)) for m, p, b in load.requests}
    lat: list[float] = []
    statuses: Counter[str] = Counter()
    errors: list[str] = []
    in_window = 0
    late = 0.0
    end = start + load.duration
    n = conn_index
    interval = conns_total / load.rate if load.rate else 0.0
    due = start + (conn_index / conns_total) * interval
    time.sleep(max(0.0, start - time.monotonic()))
    while True:
        if load.rate:
            if due >= end:
                break
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
            else:
                late = max(late, now - due)
            t0 = due
            due += interval
        else:
            t0 = time.monotonic()
            if t0 >= end:
                break
        method, path, body = load.requests[n % len(load.requests)]
        n += conns_total
        try:
            status, answer = conn.request(heads[(method, path, len(body))], body)
        except OSError as exc:
            statuses["conn-error"] += 1
            if len(errors) < 3:
                errors.append(f"{type(exc).__name__}: {exc}")
            conn.close()
            time.sleep(0.05)
            continue
        t1 = time.monotonic()
        statuses[str(status)] += 1
        lat.append((t1 - t0) * 1000)
        if status != load.expect:
            if len(errors) < 3:
                errors.append(f"{status}: {answer[:200]!r}")
        elif t1 <= end:
            in_window += 1
    conn.close()
    with lock:
        out.latencies_ms.extend(lat)
        out.in_window += in_window
        for k, v in statuses.items():
            out.statuses[k] = out.statuses.get(k, 0) + v
        out.errors = (out.errors + errors)[:5]
        out.late_ms = max(out.late_ms, late * 1000)


def _client(load: Load, first: int, mine: int, total: int, start: Any, go: Any, pipe: Any) -> None:
    out = Tally(latencies_ms=[], statuses={}, errors=[])
    lock = threading.Lock()
    go.wait()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    threads = [threading.Thread(target=_connection, args=(load, first + i, total, start.value, out, lock))
               for i in range(mine)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out.cpu_s = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    pipe.send_bytes(msgspec.msgpack.encode(out))
    pipe.close()


@dataclass
class Result:
    label: str
    latencies_ms: list[float]
    per_s: float
    statuses: dict[str, int]
    errors: list[str]
    cpu: str
    late_ms: float
    rate: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        return self.latencies_ms[min(len(self.latencies_ms) - 1, int(q * len(self.latencies_ms)))]

    @property
    def bad(self) -> int:
        return sum(v for k, v in self.statuses.items() if k != "200" and k != "201")


def run_load(label: str, load: Load, procs: int, groups: dict[str, list[int]]) -> Result:
    ctx = mp.get_context("fork")
    go = ctx.Event()
    start = ctx.Value("d", 0.0)
    procs = max(1, min(procs, load.connections))
    split = [load.connections // procs + (i < load.connections % procs) for i in range(procs)]
    children, pipes, first = [], [], 0
    for count in split:
        receiver, sender = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_client, args=(load, first, count, load.connections, start, go, sender), daemon=True)
        p.start()
        sender.close()
        children.append(p)
        pipes.append(receiver)
        first += count
    time.sleep(0.3)  # the children are forked and waiting
    window = CpuWindow({**groups, "client": [p.pid for p in children if p.pid]})
    start.value = time.monotonic() + 0.1
    window.start()
    go.set()
    total = Tally(latencies_ms=[], statuses={}, errors=[])
    for pipe in pipes:
        if not pipe.poll(load.duration + 60):
            raise RuntimeError(f"{label}: a client process did not report")
        t = msgspec.msgpack.decode(pipe.recv_bytes(), type=Tally)
        total.latencies_ms.extend(t.latencies_ms)
        total.in_window += t.in_window
        for k, v in t.statuses.items():
            total.statuses[k] = total.statuses.get(k, 0) + v
        total.errors = (total.errors + t.errors)[:5]
        total.cpu_s += t.cpu_s
        total.late_ms = max(total.late_ms, t.late_ms)
    window.stop()
    for p in children:
        p.join(5)
    return Result(label, sorted(total.latencies_ms), total.in_window / load.duration, total.statuses, total.errors,
                  window.line(), total.late_ms, load.rate)


# -- service setup --------------------------------------------------------------------


def redis_flushdb() -> None:
    with socket.create_connection(("127.0.0.1", 6379), 5) as s:
        s.sendall(f"*2\r\n$6\r\nSELECT\r\n${len(str(REDIS_DB))}\r\n{REDIS_DB}\r\n*1\r\n$7\r\nFLUSHDB\r\n".encode())
        got = b""
        while got.count(b"\r\n") < 2:
            chunk = s.recv(1024)
            if not chunk:
                break
            got += chunk
    if got != b"+OK\r\n+OK\r\n":
        raise RuntimeError(f"redis FLUSHDB answered {got!r}")


def json(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


def make_users(service: Service, count: int, tag: str) -> list[tuple[str, str, str]]:
    """(user_id, username, password) of `count` new users."""
    users = []
    for n in range(count):
        name, password = f"bench-{tag}-{n}", f"pw-{tag}-{n}-correct horse"
        r = service.post(USERS, {"username": name, "email": f"{name}@example.com", "password": password})
        if r.status_code != 201:
            raise RuntimeError(f"creating a user answered {r.status_code}: {r.text[:300]}")
        users.append((r.json()["user_id"], name, password))
    return users


def make_tokens(service: Service, users: list[tuple[str, str, str]], count: int) -> list[str]:
    tokens = []
    for n in range(count):
        r = service.post("/api/v1/user-sessions", {"user_id": users[n % len(users)][0]})
        if r.status_code != 201:
            raise RuntimeError(f"opening a session answered {r.status_code}: {r.text[:300]}")
        tokens.append(r.json()["token"])
    return tokens


def cache_counters(service: Service) -> dict[str, float]:
    text = service.http.get("/metrics").text
    out = {"hit": 0.0, "miss": 0.0}
    for m in re.finditer(r'^persistence_user_cache_total\{([^}]*)\}\s+(\S+)', text, re.M):
        result = re.search(r'result="(\w+)"', m.group(1))
        if result and result.group(1) in out:
            out[result.group(1)] += float(m.group(2))
    return out


def groups_of(service: Service) -> dict[str, list[int]]:
    assert service.proc is not None
    return roles_of(service.proc.pid)


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"


def announce(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}; {loadavg()}", flush=True)


def service_pids(service: Service) -> list[int]:
    assert service.proc is not None
    return [service.proc.pid, *descendants(service.proc.pid)]


# -- phases ---------------------------------------------------------------------------


def validate_phases(args: argparse.Namespace, folder: Path, store: str, toml: str,
                    extra: list[Result]) -> list[Result]:
    service = Service(folder / store, f"sqlite:///{folder / store / 'store.db'}", query_workers=2, extra_toml=toml)
    results: list[Result] = []
    try:
        service.start()
        users = make_users(service, min(args.users, 10), store)
        tokens = make_tokens(service, users, args.sessions)
        requests = [("POST", VALIDATE, json({"token": t})) for t in tokens]
        groups = groups_of(service)
        for port, label in ((service.query_port, "8002 query"), (service.ingest_port, "8001 relay")):
            warm = Load(port, requests, args.connections, 1.0)
            run_load("warm-up", warm, args.procs, groups)
        text = wait_quiet(args.wait_quiet, service_pids(service))
        announce(f"session store {store}: machine before it: {text}")
        for port, label in ((service.ingest_port, "8001 relay"), (service.query_port, "8002 query")):
            closed = Load(port, requests, args.connections, args.seconds)
            r = run_load(f"{store:<6} {label} closed {args.connections} conns", closed, args.procs, groups)
            results.append(r)
            show(r)
            opened = Load(port, requests, args.connections, args.seconds, rate=args.rate)
            r = run_load(f"{store:<6} {label} open {args.rate:.0f}/s", opened, args.procs, groups)
            results.append(r)
            show(r)
        if store == "sqlite":
            extra.extend(read_and_auth_phases(args, service, users, groups))
    finally:
        service.kill()
    return results


def read_and_auth_phases(args: argparse.Namespace, service: Service, users: list[tuple[str, str, str]],
                         groups: dict[str, list[int]]) -> list[Result]:
    results: list[Result] = []
    more = make_users(service, max(0, args.users - len(users)), "more")
    everyone = users + more
    reads = [("GET", f"{USERS}/{uid}", b"") for uid, _, _ in everyone]
    for port in (service.query_port, service.ingest_port):  # warm the cache of both query workers
        run_load("warm-up", Load(port, reads, args.connections, 1.0), args.procs, groups)
    for port, label in ((service.ingest_port, "8001 relay"), (service.query_port, "8002 query")):
        before = cache_counters(service)
        r = run_load(f"user read {label} closed {args.connections} conns",
                     Load(port, reads, args.connections, args.seconds), args.procs, groups)
        after = cache_counters(service)
        hit, miss = after["hit"] - before["hit"], after["miss"] - before["miss"]
        r.extra = {"hit": hit, "miss": miss}
        results.append(r)
        show(r)
    logins = [("POST", f"{USERS}/authenticate", json({"login": name, "password": pw})) for _, name, pw in everyone]
    run_load("warm-up", Load(service.query_port, logins[:4], 2, 1.0), 1, groups)
    for port, label in ((service.ingest_port, "8001 relay"), (service.query_port, "8002 query")):
        r = run_load(f"authenticate {label} closed {args.auth_connections} conns",
                     Load(port, logins, args.auth_connections, args.seconds), args.procs, groups)
        r.extra = {"hwm_kib": {pid: status_kib(pid, "VmHWM") for pid in groups.get("query worker", [])}}
        results.append(r)
        show(r)
    return results


def show(r: Result) -> None:
    late = f", max late start {r.late_ms:.1f} ms" if r.rate else ""
    bad = f", NON-2xx/errors {r.bad}: {r.errors[:2]}" if r.bad else ""
    print(f"  {r.label}: p50 {r.pct(.5):.2f} ms, p99 {r.pct(.99):.2f} ms, {r.per_s:,.0f}/s "
          f"({len(r.latencies_ms)} answers{late}){bad}\n    CPU: {r.cpu}", flush=True)


# -- report -----------------------------------------------------------------------


def report(args: argparse.Namespace, sessions: list[Result], others: list[Result]) -> int:
    users_cfg = tomllib.loads(CONFIG.read_text())["users"]
    mem_kib, threads = users_cfg["hash_memory_kib"], users_cfg["hash_threads"]
    print(f"\n{loadavg()}")
    print(f"\n1. session validate, {args.seconds:g} s per row; closed = {args.connections} connections as fast as "
          f"answers come, open = fixed {args.rate:.0f}/s (latency from the scheduled send)")
    print(f"{'store / port / mode':<42}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'req/s':>9}{'non-2xx':>9}")
    for r in sessions:
        mx = r.latencies_ms[-1] if r.latencies_ms else float("nan")
        print(f"{r.label:<42}{r.pct(.5):>8.2f}{r.pct(.99):>8.2f}{mx:>8.1f}{r.per_s:>9,.0f}{r.bad:>9}")
    reads = [r for r in others if r.label.startswith("user read")]
    auths = [r for r in others if r.label.startswith("authenticate")]
    print(f"\n2. user read by id, cache warm ({args.users} users)")
    print(f"{'port / mode':<42}{'p50 ms':>8}{'p99 ms':>8}{'req/s':>9}{'hit ratio':>11}{'non-2xx':>9}")
    for r in reads:
        hit, miss = r.extra["hit"], r.extra["miss"]
        ratio = f"{hit / (hit + miss):.4f}" if hit + miss else "n/a"
        print(f"{r.label:<42}{r.pct(.5):>8.2f}{r.pct(.99):>8.2f}{r.per_s:>9,.0f}{ratio:>11}{r.bad:>9}"
              f"   (hit {hit:.0f}, miss {miss:.0f})")
    print(f"\n3. authenticate at the shipped Argon2id defaults (time_cost {users_cfg['hash_time_cost']}, "
          f"memory {mem_kib} KiB, parallelism {users_cfg['hash_parallelism']}, hash_threads {threads})")
    print(f"{'port / mode':<42}{'p50 ms':>8}{'p99 ms':>8}{'logins/s':>10}{'non-2xx':>9}")
    for r in auths:
        print(f"{r.label:<42}{r.pct(.5):>8.1f}{r.pct(.99):>8.1f}{r.per_s:>10.1f}{r.bad:>9}")
    print(f"memory per hash: {mem_kib} KiB ({mem_kib / 1024:.0f} MiB); per query process peak: {threads} x = "
          f"{threads * mem_kib} KiB ({threads * mem_kib / 1024:.0f} MiB); with 2 query workers "
          f"{2 * threads * mem_kib / 1024:.0f} MiB")
    if auths and auths[-1].extra.get("hwm_kib"):
        hwm = ", ".join(f"pid {p}: {k / 1024:.0f} MiB" for p, k in auths[-1].extra["hwm_kib"].items())
        print(f"query workers' VmHWM after the logins: {hwm}")

    print("\ngoals (p99 judged open loop; throughput judged closed loop)")
    failed = 0
    for r in sessions:
        if r.rate:
            ok = r.pct(.99) < P99_GOAL_MS and not r.bad
            print(f"  [{'PASS' if ok else 'FAIL'}] validate p99 < {P99_GOAL_MS:g} ms, {r.label}: {r.pct(.99):.2f} ms")
        else:
            ok = r.per_s >= RATE_GOAL and not r.bad
            print(f"  [{'PASS' if ok else 'FAIL'}] validate >= {RATE_GOAL:,.0f}/s, {r.label}: {r.per_s:,.0f}/s "
                  f"(p99 {r.pct(.99):.2f} ms at saturation)")
        failed += not ok
    for r in sessions + others:
        if r.bad:
            print(f"  [WARN] {r.label}: non-2xx/connection errors {r.statuses}; first: {r.errors[:3]}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="bench_users_"))

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, on_term)
    sessions: list[Result] = []
    others: list[Result] = []
    try:
        announce("start")
        sessions += validate_phases(args, folder, "sqlite", "", others)
        redis_flushdb()
        try:
            sessions += validate_phases(args, folder, "redis", f'[user_sessions]\nurl = "{REDIS_URL}"\n', others)
        finally:
            redis_flushdb()
        code = report(args, sessions, others)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    print(f"\nrun took {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
