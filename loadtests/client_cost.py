"""How much client CPU one request costs, per HTTP client style, against the
validate-only app (loadtests/null_app.py): the measurement behind the choice
of raw keep-alive sockets in loadtests/loadgen.py.

    .venv/bin/python -m loadtests.client_cost [--seconds 6] [--connections 8]

Each style runs in one process, closed loop, `--connections` keep-alive
connections, the same ~74 KB bodies; it prints client CPU microseconds per
request (user + system of the client process) and the request rate reached.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing as mp
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from loadtests.bodies import TASKS_PATH, sessions_body, split_template, stamp, task_templates
from loadtests.bench_service import free_port
from loadtests.loadgen import RawHttp

ROOT = Path(__file__).resolve().parent.parent


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _threads(port: int, seconds: float, connections: int, make_call) -> tuple[int, float]:
    templates = [split_template(t) for t in task_templates("cc", 8)]
    end = time.monotonic() + seconds
    counts = [0] * connections

    def run(i: int) -> None:
        call = make_call()
        n = i
        while time.monotonic() < end:
            status = call(stamp(templates[n % 8], n))
            assert status == 202, status
            counts[i] += 1
            n += connections

    cpu0 = _cpu()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts), _cpu() - cpu0


def raw_threads(port: int, seconds: float, connections: int) -> tuple[int, float]:
    def make():
        conn = RawHttp("127.0.0.1", port)
        heads: dict[int, bytes] = {}

        def call(body: bytes) -> int:
            head = heads.get(len(body)) or heads.setdefault(len(body), conn.head("POST", TASKS_PATH, len(body)))
            return conn.request(head, body)[0]
        return call
    return _threads(port, seconds, connections, make)


def httpclient_threads(port: int, seconds: float, connections: int) -> tuple[int, float]:
    def make():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}

        def call(body: bytes) -> int:
            conn.request("POST", TASKS_PATH, body, headers)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        return call
    return _threads(port, seconds, connections, make)


def asyncio_streams(port: int, seconds: float, connections: int) -> tuple[int, float]:
    templates = [split_template(t) for t in task_templates("cc", 8)]

    async def one(i: int, end: float) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n, done = i, 0
        while time.monotonic() < end:
            body = stamp(templates[n % 8], n)
            writer.write(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % (TASKS_PATH.encode(), len(body)))
            writer.write(body)
            head = await reader.readuntil(b"\r\n\r\n")
            lower = head.lower()
            at = lower.find(b"content-length:")
            length = int(lower[at + 15:lower.find(b"\r\n", at)])
            await reader.readexactly(length)
            assert head[9:12] == b"202", head
            done += 1
            n += connections
        writer.close()
        return done

    async def main() -> int:
        end = time.monotonic() + seconds
        return sum(await asyncio.gather(*(one(i, end) for i in range(connections))))

    cpu0 = _cpu()
    count = asyncio.run(main())
    return count, _cpu() - cpu0


STYLES = {"raw sockets, 1 thread/conn": raw_threads,
          "http.client, 1 thread/conn": httpclient_threads,
          "asyncio streams, 1 loop": asyncio_streams}


def _child(style: str, port: int, seconds: float, connections: int, out) -> None:
    out.send(STYLES[style](port, seconds, connections))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--no-ws", "--loop", "uvloop",
         "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(args.workers), "--log-level", "warning",
         "loadtests.null_app:create_app"], cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = RawHttp("127.0.0.1", port).call("POST", "/api/v1/translation/sessions/batch",
                                                               sessions_body("cc", 8))
                if status == 202:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        ctx = mp.get_context("fork")
        print(f"{'client style':30} {'req/s':>8} {'client CPU us/req':>18} {'client CPU %':>13}")
        for style in STYLES:
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(style, port, args.seconds, args.connections, sender))
            proc.start()
            count, cpu = receiver.recv()
            proc.join()
            print(f"{style:30} {count / args.seconds:8.0f} {cpu / count * 1e6:18.0f} {100 * cpu / args.seconds:13.1f}")
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


if __name__ == "__main__":
    main()
