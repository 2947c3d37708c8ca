"""The load generator of the write benchmark: a minimal keep-alive HTTP/1.1
client on raw sockets, and client processes that drive N connections (one
thread each) closed-loop or on a fixed schedule (open loop).

Why raw sockets: on a 2-core machine the load generator steals CPU from the
service it measures. A request here costs one sendmsg(), one or two recv()
calls and a few lines of Python: about 75 us of client CPU per 74 KB request,
against about 275 us with http.client and 130 us with asyncio streams
(loadtests/client_cost.py measures it).
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import random
import resource
import socket
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgspec

from loadtests.bodies import (SESSIONS_PATH, TASKS_PATH, TASKS_PER_REQUEST, sessions_body, split_template,
                              stamp, task_templates)

# -- a minimal HTTP/1.1 keep-alive client ------------------------------------

class RawHttp:
    """One keep-alive connection. request() returns (status, body)."""

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self._buf = b""
        self.last_header = b""  # the last response's head, lower-cased

    def connect(self) -> None:
        self.close()
        self.sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def head(self, method: str, path: str, length: int) -> bytes:
        return (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()

    def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        sent = self.sock.sendmsg([head, body]) if body else self.sock.send(head)
        if sent < len(head) + len(body):
            self.sock.sendall((head + body)[sent:])
        return self._response()

    def _response(self) -> tuple[int, bytes]:
        data = self._buf
        while (end_of_head := data.find(b"\r\n\r\n")) < 0:
            data += self._recv()
        header = self.last_header = data[:end_of_head].lower()
        at = header.find(b"content-length:")
        if at < 0:
            self.close()
            raise ConnectionError("response without content-length")
        line_end = header.find(b"\r\n", at)
        end = end_of_head + 4 + int(header[at + 15:line_end if line_end > 0 else len(header)])
        while len(data) < end:
            data += self._recv()
        self._buf = data[end:]
        if b"connection: close" in header:
            self.close()
        return int(header[9:12]), data[end_of_head + 4:end]

    def _recv(self) -> bytes:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            self.close()
            raise ConnectionError("the server closed the connection")
        return chunk

    def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        return self.request(self.head(method, path, len(body)), body)

    def retry_after(self) -> float:
        """The last response's Retry-After in seconds (0 when it had none)."""
        at = self.last_header.find(b"\r\nretry-after:")
        if at < 0:
            return 0.0
        end = self.last_header.find(b"\r\n", at + 2)
        try:
            return float(self.last_header[at + 15:end if end > 0 else len(self.last_header)])
        except ValueError:
            return 0.0


# -- client process -------------------------------------------------------------

class ClientPlan(msgspec.Struct, frozen=True):
    port: int
    tag: str  # unique per phase and process: the prefix of its session and task ids
    connections: int
    duration: float
    rate: float = 0.0  # requests/s for this process; 0 = closed loop (as fast as answers come)
    sessions: int = 8
    host: str = "127.0.0.1"
    max_requests: int = 0  # > 0: this process stops after that many requests (fills)
    # This share of requests re-sends the tasks of an earlier request of the same connection (acknowledged,
    # so no two sends of a key are in flight at once), with new content: the next of VARIANTS templates.
    update_share: float = 0.0
    retry_after: bool = False  # after a 429, wait its Retry-After (capped at the window's end), as clients do
    track: bool = False  # report every acknowledged (number, variant) and every send with no clear answer


class ClientResult(msgspec.Struct):
    tag: str
    latencies_ms: list[float]  # one per request, completed in the window or not
    statuses: dict[str, int]
    requests_in_window: int  # 202s completed inside [start, start + duration]
    rows_in_window: int
    rows_accepted: int  # every 202, in the window or just after it
    cpu_s: float
    first_errors: list[str]
    late_ms_max: float = 0.0  # open loop: how far behind schedule a send started
    # with plan.track: flat [answer time us (monotonic), request number, variant, ...] of every 202, and
    # flat [number, variant, ...] of sends that may or may not have been stored (no answer, or a 5xx)
    acked: list[int] = []
    unsure: list[int] = []


def client_main(plan: ClientPlan, ready: Any, go: Any, start_at: Any, out: Any) -> None:
    """Body of one client process: prepare, wait for the common start, load,
    send a ClientResult down `out` (a Connection)."""
    try:
        result = _run_client(plan, ready, go, start_at)
        out.send_bytes(msgspec.msgpack.encode(result))
    except BaseException as exc:  # reported to the parent, which fails the phase
        out.send_bytes(msgspec.msgpack.encode(ClientResult(plan.tag, [], {"crash": 1}, 0, 0, 0, 0.0,
                                                           [f"{type(exc).__name__}: {exc}"])))
    finally:
        out.close()


class _Tally:
    """What one connection (or, merged, one process) saw."""

    def __init__(self) -> None:
        self.latencies_ms = array("d")
        self.statuses: Counter[str] = Counter()
        self.requests_in_window = 0
        self.rows_in_window = 0
        self.rows_accepted = 0
        self.errors: list[str] = []
        self.late_s = 0.0
        self.acked = array("q")
        self.unsure = array("q")

    def answered(self, status: int, answer: bytes, t0: float, t1: float, end: float) -> None:
        self.statuses[str(status)] += 1
        self.latencies_ms.append((t1 - t0) * 1000)
        if status != 202:
            self._error(f"{status}: {answer[:300]!r}")
            return
        self.rows_accepted += TASKS_PER_REQUEST
        if t1 <= end:
            self.requests_in_window += 1
            self.rows_in_window += TASKS_PER_REQUEST

    def track(self, status: int, t1: float, number: int, variant: int) -> None:
        if status == 202:
            self.acked.extend((int(t1 * 1e6), number, variant))
        elif status >= 500:  # e.g. a timeout after the append: it may be stored
            self.unsure.extend((number, variant))

    def failed(self, exc: OSError) -> None:
        self.statuses["conn-error"] += 1
        self._error(f"{type(exc).__name__}: {exc}")

    def _error(self, text: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(text)

    def merge(self, other: _Tally) -> None:
        self.latencies_ms.extend(other.latencies_ms)
        self.statuses.update(other.statuses)
        self.requests_in_window += other.requests_in_window
        self.rows_in_window += other.rows_in_window
        self.rows_accepted += other.rows_accepted
        self.errors = (self.errors + other.errors)[:5]
        self.late_s = max(self.late_s, other.late_s)
        self.acked.extend(other.acked)
        self.unsure.extend(other.unsure)

    def result(self, tag: str, cpu_s: float) -> ClientResult:
        return ClientResult(tag, self.latencies_ms.tolist(), dict(self.statuses), self.requests_in_window,
                            self.rows_in_window, self.rows_accepted, cpu_s, self.errors, self.late_s * 1000,
                            self.acked.tolist(), self.unsure.tolist())


def _send_times(plan: ClientPlan, index: int, start: float, tally: _Tally) -> Iterator[float]:
    """When connection `index` sends, as the time its latency counts from:
    closed loop, as soon as the previous answer is in; open loop, on a fixed
    schedule (connections staggered), however late the previous answer was."""
    end = start + plan.duration
    if not plan.rate:
        _sleep_until(start)
        while (now := time.monotonic()) < end:
            yield now
        return
    interval = plan.connections / plan.rate
    due = start + index / plan.connections * interval
    while due < end:
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        else:
            tally.late_s = max(tally.late_s, now - due)
        yield due
        due += interval


VARIANTS = 4  # content versions of each template when plan.update_share > 0


class _Picker:
    """Which request a connection sends next: a new number (index,
    index + connections, ...), or with plan.update_share an earlier
    acknowledged one again, with the next content variant."""

    def __init__(self, plan: ClientPlan, index: int) -> None:
        self.plan = plan
        self.next_number = index
        self.acked: list[int] = []  # numbers this connection got a 202 for
        self.variant: dict[int, int] = {}  # number -> variant last sent (updates only)
        self.rng = random.Random(f"{plan.tag}/{index}")

    def pick(self) -> tuple[int, int]:
        if self.plan.update_share and self.acked and self.rng.random() < self.plan.update_share:
            number = self.rng.choice(self.acked)
            variant = self.variant[number] = (self.variant.get(number, 0) + 1) % VARIANTS
            return number, variant
        number = self.next_number
        self.next_number += self.plan.connections
        return number, 0

    def answered(self, status: int, number: int, variant: int) -> None:
        if status == 202 and variant == 0 and self.plan.update_share:
            self.acked.append(number)


def _drive(conn: RawHttp, templates: list[list[list[bytes]]], plan: ClientPlan, index: int, start: float,
           quota: Iterator[int]) -> _Tally:
    """One connection's requests. They are numbered index, index + connections, ...
    inside the process; the plan's tag keeps processes and phases apart.
    templates[variant][k]: the body parts of template k in that content variant."""
    tally = _Tally()
    heads: dict[int, bytes] = {}
    picker = _Picker(plan, index)
    end = start + plan.duration
    for t0 in _send_times(plan, index, start, tally):
        if plan.max_requests and next(quota) >= plan.max_requests:
            break
        number, variant = picker.pick()
        body = stamp(templates[variant][number % len(templates[0])], number)
        head = heads.get(len(body)) or heads.setdefault(len(body), conn.head("POST", TASKS_PATH, len(body)))
        try:
            status, answer = conn.request(head, body)
        except OSError as exc:
            tally.failed(exc)
            if plan.track:
                tally.unsure.extend((number, variant))
            conn.close()  # reconnects on the next request
            time.sleep(0.05)
            continue
        t1 = time.monotonic()
        tally.answered(status, answer, t0, t1, end)
        picker.answered(status, number, variant)
        if plan.track:
            tally.track(status, t1, number, variant)
        if status == 429 and plan.retry_after:
            time.sleep(max(0.0, min(conn.retry_after(), end - time.monotonic())))
    return tally


def variant_templates(tag: str, sessions: int, update_share: float) -> list[list[bytes]]:
    """templates[variant][k] as JSON bodies: variant 0 is bodies.task_templates' own;
    the others have the same ids and sessions, other content (another seed)."""
    return [task_templates(tag, sessions, seed=2 + v) for v in range(VARIANTS if update_share else 1)]


def _prepare(plan: ClientPlan) -> tuple[list[list[list[bytes]]], list[RawHttp]]:
    """Build the bodies, post this process's sessions, open the connections."""
    templates = [[split_template(t) for t in variant]
                 for variant in variant_templates(plan.tag, plan.sessions, plan.update_share)]
    setup = RawHttp(plan.host, plan.port)
    status, answer = setup.call("POST", SESSIONS_PATH, sessions_body(plan.tag, plan.sessions))
    setup.close()
    if status != 202:
        raise RuntimeError(f"posting sessions answered {status}: {answer[:200]!r}")
    conns = [RawHttp(plan.host, plan.port) for _ in range(plan.connections)]
    for conn in conns:
        conn.connect()
    return templates, conns


def _run_client(plan: ClientPlan, ready: Any, go: Any, start_at: Any) -> ClientResult:
    templates, conns = _prepare(plan)
    ready.release()
    go.wait()
    start = start_at.value
    cpu0 = _cpu()
    quota = itertools.count()  # shared by the threads: next() is atomic under the GIL
    tallies: list[_Tally] = [_Tally() for _ in conns]

    def run(i: int) -> None:
        tallies[i] = _drive(conns[i], templates, plan, i, start, quota)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(conns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(plan.duration + 120)
    total = _Tally()
    for tally in tallies:
        total.merge(tally)
    for conn in conns:
        conn.close()
    return total.result(plan.tag, _cpu() - cpu0)


def _sleep_until(when: float) -> None:
    time.sleep(max(0.0, when - time.monotonic()))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class ClientPool:
    """Start `plans` as processes, release them together, collect results."""

    def __init__(self, plans: list[ClientPlan]) -> None:
        self.plans = plans
        ctx = mp.get_context("fork")
        self._ready = ctx.Semaphore(0)
        self._go = ctx.Event()
        self._start_at = ctx.Value("d", 0.0)
        self._pipes = []
        self.procs = []
        for plan in plans:
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=client_main, args=(plan, self._ready, self._go, self._start_at, sender),
                               daemon=True, name=f"client-{plan.tag}")
            self._pipes.append(receiver)
            self.procs.append((proc, sender))

    def start(self, timeout: float = 60.0) -> float:
        """Start every process, wait until each is ready, release them; returns the start time (monotonic)."""
        for proc, _ in self.procs:
            proc.start()
        for proc, sender in self.procs:
            sender.close()
        deadline = time.monotonic() + timeout
        for _ in self.procs:
            if not self._ready.acquire(timeout=max(0.1, deadline - time.monotonic())):
                # a client died while preparing: its pipe carries the reason
                raise RuntimeError("client processes did not get ready: " + self._crash_reasons())
        self._start_at.value = time.monotonic() + 0.2
        self._go.set()
        return self._start_at.value

    def _crash_reasons(self) -> str:
        reasons = []
        for pipe in self._pipes:
            if pipe.poll(0.5):
                try:
                    reasons.extend(msgspec.msgpack.decode(pipe.recv_bytes(), type=ClientResult).first_errors)
                except (EOFError, OSError):
                    pass
        return "; ".join(reasons) or "unknown"

    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.procs if p.pid]

    def results(self, timeout: float) -> list[ClientResult]:
        out = []
        deadline = time.monotonic() + timeout
        for pipe in self._pipes:
            if not pipe.poll(max(0.1, deadline - time.monotonic())):
                raise RuntimeError("a client process did not report in time")
            out.append(msgspec.msgpack.decode(pipe.recv_bytes(), type=ClientResult))
        for proc, _ in self.procs:
            proc.join(5)
        return out

    def kill(self) -> None:
        for proc, _ in self.procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
