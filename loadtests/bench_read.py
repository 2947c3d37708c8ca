"""Read benchmark: loads a private MariaDB through the service's own write
path (10,000 sessions, 1,000,000 tasks, one session with 10,000 open tasks),
then measures reads through port 8001 with concurrent clients and prints
p50/p95/p99 per endpoint, reads/s at 32 clients, restore time and the query
process's peak RSS, with PASS/FAIL against the targets.

    cd /work/main && .venv/bin/python -m loadtests.bench_read [--tasks 1000000] [--quick]

Bounded in time, loopback only; every process it starts is killed and the
temporary folder removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.client
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from loadtests.bench_service import Reaper, ServiceProc
from loadtests.loadgen import RawHttp
from testkit.mariadb import PrivateMariaDB

API = "/api/v1/translation"
HOST = "127.0.0.1"
RESTORE_SESSION = "restore-me"
STATUSES = ["pending", "processing", "completed", "failed"]
SESSION_STATUSES = ["pending", "processing", "processing", "completed", "completed", "failed"]
TEXT = "Open the gate at dawn. 黎明时打开城门。"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--restore-tasks", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=400, help="timed requests per endpoint")
    parser.add_argument("--concurrency", type=int, default=8, help="clients for the latency figures")
    parser.add_argument("--mix-seconds", type=float, default=20.0, help="length of the 32-client mixed run")
    parser.add_argument("--deep-pages", type=int, default=2000, help="cursor pages walked for the deep page")
    parser.add_argument("--quick", action="store_true", help="100k tasks, fewer requests: a smoke run")
    parser.add_argument("--sink", choices=("mariadb", "sqlite"), default="mariadb",
                        help="a private MariaDB (default) or the embedded SQLite sink")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.tasks, args.requests, args.mix_seconds, args.deep_pages = 1000, 100_000, 100, 5, 200
    return args


# -- loading through the write path -------------------------------------------

def _session(session_id: str, rng: random.Random, tasks: int) -> dict:
    status = "processing" if session_id == RESTORE_SESSION else rng.choice(SESSION_STATUSES)
    return {"session_id": session_id, "filename": f"{session_id}.xlsx", "file_path": f"/games/{session_id}.xlsx",
            "status": status, "llm_provider": "openai", "total_tasks": tasks,
            "completed_tasks": tasks // 2 if status != "pending" else 0, "game_info": {"game_name": "Bench"}}


def _task(task_id: str, session_id: str, row: int, status: str) -> dict:
    return {"task_id": task_id, "session_id": session_id, "batch_id": "b", "sheet_name": f"Sheet{row % 3}",
            "row_index": row, "column_name": "text", "source_text": TEXT, "status": status,
            "duration_ms": 500 + row % 1000 if status == "completed" else None}


def plan_requests(args: argparse.Namespace) -> tuple[list[str], list[bytes], list[bytes]]:
    """Session ids, session batch bodies, task batch bodies (100 tasks each)."""
    rng = random.Random(7)
    ids = [RESTORE_SESSION] + [f"s{i:05d}" for i in range(1, args.sessions)]
    others = args.tasks - args.restore_tasks
    per_session = max(1, others // (len(ids) - 1))
    session_bodies = [msgspec.json.encode({"sessions": [_session(s, rng, per_session) for s in ids[i:i + 1000]]})
                      for i in range(0, len(ids), 1000)]
    tasks = [(f"r-{row}", RESTORE_SESSION, row, "pending") for row in range(args.restore_tasks)]
    for n in range(others):
        session_id = ids[1 + n % (len(ids) - 1)]
        tasks.append((f"t-{n}", session_id, n // (len(ids) - 1), rng.choice(STATUSES)))
    task_bodies = [msgspec.json.encode({"tasks": [_task(*t) for t in tasks[i:i + 100]]})
                   for i in range(0, len(tasks), 100)]
    return ids, session_bodies, task_bodies


def post_all(port: int, path: str, bodies: list[bytes], threads: int = 6) -> None:
    timed(port, [("POST", path, body) for body in bodies], threads, expect=202)


# -- measuring --------------------------------------------------------------------

def timed(port: int, paths: list[tuple], concurrency: int, expect: int = 200) -> list[float]:
    """Latencies (ms) of the given (method, path[, body]) requests, sent by `concurrency` clients."""
    queue = list(reversed(paths))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []

    def worker() -> None:
        http = RawHttp(HOST, port)
        while True:
            with lock:
                if not queue:
                    return
                method, path, *payload = queue.pop()
            started = time.perf_counter()
            status, body = http.call(method, path, *payload)
            elapsed = (time.perf_counter() - started) * 1000
            if status != expect:
                failures.append(f"{method} {path}: {status} {body[:200]!r}")
            with lock:
                latencies.append(elapsed)

    pool = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if failures:
        raise RuntimeError(f"{len(failures)} reads failed, first: {failures[0]}")
    return sorted(latencies)


def timed_restores(port: int, times: int) -> tuple[list[float], int]:
    """The restore answer is streamed (chunked): http.client reads it whole."""
    latencies, count = [], 0
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    for _ in range(times):
        started = time.perf_counter()
        conn.request("POST", f"{API}/recovery/restore/{RESTORE_SESSION}")
        answer = conn.getresponse()
        body = answer.read()
        latencies.append((time.perf_counter() - started) * 1000)
        if answer.status != 200:
            raise RuntimeError(f"restore: {answer.status} {body[:200]!r}")
        count = msgspec.json.decode(body)["tasks_count"]
    conn.close()
    return sorted(latencies), count


def walk_cursor(port: int, pages: int) -> tuple[list[float], list[str]]:
    """Walk /tasks with next_cursor; (per-page latencies, the cursors seen)."""
    http = RawHttp(HOST, port)
    path = f"{API}/tasks?page_size=100"
    latencies, cursors = [], []
    for _ in range(pages):
        started = time.perf_counter()
        status, body = http.call("GET", path)
        latencies.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise RuntimeError(f"cursor walk: {status} {body[:200]!r}")
        cursor = msgspec.json.decode(body).get("next_cursor")
        if not cursor:
            break
        cursors.append(cursor)
        path = f"{API}/tasks?page_size=100&cursor={cursor}"
    return latencies, cursors


def mixed(port: int, make_path: Callable[[random.Random], str], clients: int, seconds: float) -> tuple[int, float]:
    """Reads completed by `clients` closed-loop clients in `seconds`: (count, reads/s)."""
    done = [0] * clients
    stop_at = time.monotonic() + seconds

    def worker(index: int) -> None:
        rng = random.Random(index)
        http = RawHttp(HOST, port)
        while time.monotonic() < stop_at:
            status, _ = http.call("GET", make_path(rng))
            if status == 200:
                done[index] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(done), sum(done) / seconds


def query_peak_rss_mb(service: ServiceProc) -> float:
    """Peak RSS (VmHWM) of the query process's granian worker(s)."""
    peak = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"query.app" not in (proc / "cmdline").read_bytes():
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            continue
    return peak


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def row(name: str, values: list[float]) -> str:
    return f"{name:<44}{len(values):>7}{pct(values, .5):>9.2f}{pct(values, .95):>9.2f}{pct(values, .99):>9.2f}"


def run(args: argparse.Namespace, reaper: Reaper, folder: Path) -> int:
    if args.sink == "sqlite":
        sink_url, described = f"sqlite:///{folder / 'store.db'}", "embedded SQLite sink"
    else:
        mariadb = PrivateMariaDB(folder / "mariadb")
        reaper.mariadb = mariadb
        mariadb.start()
        sink_url, described = mariadb.url("bench_read"), mariadb.describe()
    service = ServiceProc(reaper, folder / "svc", sink_url, sync="normal", workers=2)
    service.start()
    service.wait_ready(need_database=True)
    port = service.ingest_port
    ids, session_bodies, task_bodies = plan_requests(args)
    started = time.monotonic()
    post_all(port, f"{API}/sessions/batch", session_bodies)
    post_all(port, f"{API}/tasks/batch", task_bodies)
    accepted_s = time.monotonic() - started
    if not service.flush_all(timeout=1800):
        raise RuntimeError("the database did not catch up")
    loaded_s = time.monotonic() - started
    print(described)
    print(f"loaded {len(ids):,} sessions and {args.tasks:,} tasks through POST /batch: accepted in "
          f"{accepted_s:.0f} s, all in the database after {loaded_s:.0f} s ({args.tasks / loaded_s:,.0f} rows/s)")

    rng = random.Random(11)
    n = args.requests
    results: dict[str, list[float]] = {}
    task_ids = [f"t-{rng.randrange(args.tasks - args.restore_tasks)}" for _ in range(n)]
    timed(port, [("GET", f"{API}/sessions/{ids[1]}")] * 50, args.concurrency)  # warm up connections and caches
    results["session list (page 1-50, some by status)"] = timed(port, [
        ("GET", f"{API}/sessions?page={rng.randint(1, 50)}&page_size=20"
                + (f"&status={rng.choice(SESSION_STATUSES)}" if rng.random() < .5 else "")) for _ in range(n)],
        args.concurrency)
    results["session detail"] = timed(port, [("GET", f"{API}/sessions/{rng.choice(ids)}") for _ in range(n)],
                                      args.concurrency)
    results["a session's tasks, page 1 (50)"] = timed(
        port, [("GET", f"{API}/sessions/{rng.choice(ids[1:])}/tasks?page_size=50") for _ in range(n)],
        args.concurrency)
    results["single task"] = timed(port, [("GET", f"{API}/tasks/{t}") for t in task_ids], args.concurrency)
    walk, cursors = walk_cursor(port, args.deep_pages)
    deep = cursors[len(cursors) * 3 // 4:]
    results[f"deep /tasks page by cursor (rows {len(cursors) * 75:,}+)"] = timed(
        port, [("GET", f"{API}/tasks?page_size=100&cursor={rng.choice(deep)}") for _ in range(n)],
        args.concurrency)
    results["stats"] = timed(port, [("GET", f"{API}/stats")] * max(20, n // 10), args.concurrency)
    restore, restored = timed_restores(port, 10)
    rss = query_peak_rss_mb(service)

    def mix_path(r: random.Random) -> str:
        choice = r.random()
        if choice < .25:
            return f"{API}/sessions?page={r.randint(1, 50)}&page_size=20"
        if choice < .5:
            return f"{API}/sessions/{r.choice(ids)}"
        if choice < .75:
            return f"{API}/sessions/{r.choice(ids[1:])}/tasks?page_size=50"
        return f"{API}/tasks/t-{r.randrange(args.tasks - args.restore_tasks)}"

    count, per_s = mixed(port, mix_path, 32, args.mix_seconds)

    print(f"\nlatency through port 8001, {args.concurrency} concurrent clients, ms")
    print(f"{'read':<44}{'n':>7}{'p50':>9}{'p95':>9}{'p99':>9}")
    for name, values in results.items():
        print(row(name, values))
    print(row(f"restore of {args.restore_tasks:,} open tasks (whole body)", restore))
    first, last = walk[:100], walk[-100:]
    print(f"cursor walk of /tasks: first 100 pages p50 {sorted(first)[len(first) // 2]:.2f} ms, "
          f"pages {len(walk) - 100}-{len(walk)} p50 {sorted(last)[len(last) // 2]:.2f} ms")
    print(f"restore answered {restored:,} tasks; query process peak RSS {rss:.0f} MB")
    print(f"mixed reads (list, detail, tasks page, task), 32 clients, {args.mix_seconds:.0f} s: {count:,} reads, "
          f"{per_s:,.0f} reads/s")
    print("\ntargets")
    failed = 0
    for name, values in results.items():
        if name == "stats":
            continue
        ok = pct(values, .95) < 20
        failed += not ok
        print(f"  [{'PASS' if ok else 'FAIL'}] p95 < 20 ms: {name}: {pct(values, .95):.2f} ms")
    checks = [("reads/s at 32 clients >= 1,000", per_s >= 1000, f"{per_s:,.0f}")]
    if args.restore_tasks == 10_000:  # the target is for 10,000; other sizes only print their figure
        checks.append(("restore of 10,000 tasks < 1 s (p50)", pct(restore, .5) < 1000, f"{pct(restore, .5):.0f} ms"))
    for label, ok, value in checks:
        failed += not ok
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}: {value}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reaper = Reaper()
    folder = Path(tempfile.mkdtemp(prefix="bench_read_"))
    reaper.folder = folder
    try:
        return run(args, reaper, folder)
    finally:
        reaper.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
