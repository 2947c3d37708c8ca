"""The write acknowledgement's floor: one request at a time over one
keep-alive connection, a pause between requests, so nothing queues. Prints
p50/p90/p99 at the client for GET /health, a valid 74 KB task batch (202),
and the same batch made invalid (400, refused before the spool).

    cd /work/main && .venv/bin/python -m loadtests.ack_floor [--sync full] [--requests 300]

The embedded SQLite sink, so no database server takes CPU. Environment
overrides reach the service (PS_FLUSH_MAX_DELAY=3600 pauses the flusher;
GRANIAN_RUNTIME_MODE=st, ...). Bounded in time, loopback only; the service
is killed and its folder removed at the end.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from loadtests import bodies
from loadtests.bench_service import Reaper, ServiceProc
from loadtests.loadgen import RawHttp

HOST = "127.0.0.1"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    parser.add_argument("--requests", type=int, default=300, help="per kind of request")
    parser.add_argument("--pause", type=float, default=0.01, help="seconds between two requests")
    return parser.parse_args(argv)


def timed(call: Callable[[int], int], expect: int, n: int, pause: float) -> list[float]:
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        status = call(i)
        latencies.append((time.perf_counter() - started) * 1000)
        if status != expect:
            raise RuntimeError(f"answer {status}, expected {expect}")
        time.sleep(pause)
    return sorted(latencies)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reaper = Reaper()
    folder = Path(tempfile.mkdtemp(prefix="ack_floor_"))
    reaper.folder = folder
    try:
        service = ServiceProc(reaper, folder / "svc", f"sqlite:///{folder / 'store.db'}", sync=args.sync, workers=2)
        service.start()
        service.wait_ready(need_database=False)
        http = RawHttp(HOST, service.ingest_port)
        http.call("POST", bodies.SESSIONS_PATH, bodies.sessions_body("f", 1))
        parts = bodies.split_template(bodies.task_templates("f", 1)[0])
        kinds = {
            "GET /health": (lambda i: http.call("GET", "/health")[0], 200),
            "POST 100 tasks (74 KB), 202": (lambda i: http.call("POST", bodies.TASKS_PATH,
                                                                bodies.stamp(parts, i))[0], 202),
            "the same batch, not JSON, 400": (lambda i: http.call("POST", bodies.TASKS_PATH,
                                                                  bodies.stamp(parts, i)[:-2] + b"x}")[0], 400),
        }
        print(f"one request at a time, {args.pause * 1000:.0f} ms apart, sync={args.sync}; ms at the client")
        print(f"{'request':<34}{'n':>6}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
        for name, (call, expect) in kinds.items():
            v = timed(call, expect, args.requests, args.pause)
            n = len(v)
            print(f"{name:<34}{n:>6}{v[n // 2]:>8.2f}{v[int(n * .9)]:>8.2f}{v[int(n * .99)]:>8.2f}{v[-1]:>8.2f}")
        return 0
    finally:
        reaper.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
