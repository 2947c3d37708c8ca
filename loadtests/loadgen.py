"""Load generator pieces for bench_write.py: realistic request bodies built
once, a minimal keep-alive HTTP/1.1 client on raw sockets, and a client
process that drives N connections (one thread each) closed-loop or at a
fixed rate.

Why raw sockets: on a 2-core machine the load generator steals CPU from the
service it measures. A request here costs one sendmsg() and one or two
recv() calls and a few lines of Python; http.client parses headers with
email.parser and costs several times more per request (see
loadtests/client_cost.py for the measurement).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import random
import resource
import socket
import threading
import time
from array import array
from collections import Counter
from typing import Any

import msgspec

SESSIONS_PATH = "/api/v1/translation/sessions/batch"
TASKS_PATH = "/api/v1/translation/tasks/batch"

# Stamped with the request number in every task_id of a pre-built body.
PLACEHOLDER = b"~~~~~~~~~~"
TASKS_PER_REQUEST = 100

_LATIN = (
    "The caravan leaves at dawn; bring the sealed letter to the captain of the northern gate",
    "Equip the Frostbrand Sword to deal +35% damage against fire elementals for 12 seconds",
    "You have not collected enough Moonstones. Return when you have at least 20 of them",
    "Quest updated: speak with Elder Rowan in the village square before nightfall",
    "Your inventory is full. Sell or discard items before picking up the treasure chest",
    "Press [E] to interact. Hold [Shift] to sprint. Stamina regenerates while walking",
    "Achievement unlocked: Master Alchemist (brew 100 potions without failing once)",
    "Warning: unsaved progress will be lost if you return to the main menu now",
)
_CJK = (
    "商队将在黎明出发", "请把密封的信交给北门的队长", "装备霜刃之剑", "对火元素造成额外伤害",
    "你收集的月光石还不够", "在村庄广场与长老罗文交谈", "背包已满", "出售或丢弃物品",
    "按住奔跑", "成就解锁", "大师级炼金术士", "返回主菜单将丢失未保存的进度", "任务已更新",
    "冒険者ギルドへようこそ", "회복 물약을 사용하세요", "体力会在行走时恢复", "宝箱", "夜幕降临之前",
)


def _mixed(rng: random.Random, chars: int, cjk_share: float) -> str:
    """About `chars` characters: runs of Latin words and CJK phrases, with
    roughly `cjk_share` of the pieces CJK."""
    parts: list[str] = []
    size = 0
    while size < chars:
        if rng.random() < cjk_share:
            piece = rng.choice(_CJK)
        else:
            words = rng.choice(_LATIN).split()
            at = rng.randrange(len(words))
            piece = " ".join(words[at:at + rng.randint(2, 6)])
        parts.append(piece)
        size += len(piece) + 1
    return " ".join(parts)[:chars].strip()


def session_record(session_id: str, rng: random.Random) -> dict[str, Any]:
    return {
        "session_id": session_id, "filename": f"{rng.choice(('dialogue', 'items', 'quests'))}_zh-CN.xlsx",
        "file_path": f"/data/projects/rpg/{session_id}/source.xlsx", "status": "processing",
        "llm_provider": rng.choice(("openai", "qwen")),
        "game_info": {"game_name": "Chronicles of Ember", "source_language": "en",
                      "target_language": "zh-CN", "game_type": "rpg"},
        "metadata": {"uploader": "loadtest", "priority": 2}, "total_tasks": 100_000,
    }


def task_record(task_id: str, session_id: str, index: int, rng: random.Random) -> dict[str, Any]:
    return {
        "task_id": task_id, "session_id": session_id, "batch_id": f"batch-{index // 50:04d}",
        "sheet_name": rng.choice(("Dialogue", "Items", "Quests", "UI")), "row_index": index,
        "column_name": "C",
        # English source with CJK terms, mostly-CJK translation, mixed context.
        "source_text": _mixed(rng, 140, 0.25),
        "target_text": _mixed(rng, 60, 0.85),
        "context": _mixed(rng, 70, 0.3),
        "status": "completed", "confidence": round(rng.uniform(0.7, 1.0), 4), "retry_count": 0,
        "start_time": "2025-09-30T10:15:30.123456Z", "end_time": "2025-09-30T10:15:31.654321Z",
        "duration_ms": 1531,
    }


def session_ids(tag: str, count: int) -> list[str]:
    return [f"{tag}-s{i:03d}" for i in range(count)]


def sessions_body(tag: str, count: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    return msgspec.json.encode({"sessions": [session_record(s, rng) for s in session_ids(tag, count)]})


def task_templates(tag: str, count: int, seed: int = 2) -> list[bytes]:
    """`count` distinct bodies of TASKS_PER_REQUEST tasks, template k for
    session k; every task_id holds PLACEHOLDER, replaced per request so that
    every request writes new rows (task_id <= 64 chars)."""
    rng = random.Random(seed)
    out = []
    for k, sid in enumerate(session_ids(tag, count)):
        tasks = [task_record(f"{tag}-{PLACEHOLDER.decode()}-{i:03d}", sid, i, rng)
                 for i in range(TASKS_PER_REQUEST)]
        body = msgspec.json.encode({"tasks": tasks})
        assert body.count(PLACEHOLDER) == TASKS_PER_REQUEST
        out.append(body)
    return out


def split_template(template: bytes) -> list[bytes]:
    return template.split(PLACEHOLDER)


def stamp(parts: list[bytes], number: int) -> bytes:
    """The body of request `number`: one C-level join (about 5 us for 74 KB)."""
    return (b"%010d" % number).join(parts)


# -- a minimal HTTP/1.1 keep-alive client ------------------------------------

class RawHttp:
    """One keep-alive connection. request() returns (status, body)."""

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self._buf = b""

    def connect(self) -> None:
        self.close()
        self.sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def head(self, method: str, path: str, length: int) -> bytes:
        return (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()

    def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        if self.sock is None:
            self.connect()
        sock = self.sock
        assert sock is not None
        total = len(head) + len(body)
        sent = sock.sendmsg([head, body]) if body else sock.send(head)
        if sent < total:
            sock.sendall((head + body)[sent:])
        data = self._buf
        while True:
            end_of_head = data.find(b"\r\n\r\n")
            if end_of_head >= 0:
                break
            chunk = sock.recv(65536)
            if not chunk:
                self.close()
                raise ConnectionError("server closed the connection")
            data += chunk
        header = data[:end_of_head]
        status = int(header[9:12])
        lower = header.lower()
        at = lower.find(b"content-length:")
        if at < 0:
            self.close()
            raise ConnectionError("response without content-length")
        line_end = lower.find(b"\r\n", at)
        length = int(lower[at + 15:line_end if line_end > 0 else len(lower)])
        end = end_of_head + 4 + length
        while len(data) < end:
            chunk = sock.recv(65536)
            if not chunk:
                self.close()
                raise ConnectionError("server closed the connection mid-body")
            data += chunk
        self._buf = data[end:]
        if b"connection: close" in lower:
            self.close()
        return status, data[end_of_head + 4:end]

    def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        return self.request(self.head(method, path, len(body)), body)


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


def _run_client(plan: ClientPlan, ready: Any, go: Any, start_at: Any) -> ClientResult:
    templates = [split_template(t) for t in task_templates(plan.tag, plan.sessions)]
    setup = RawHttp(plan.host, plan.port)
    status, answer = setup.call("POST", SESSIONS_PATH, sessions_body(plan.tag, plan.sessions))
    if status != 202:
        raise RuntimeError(f"posting sessions answered {status}: {answer[:200]!r}")
    setup.close()
    conns = [RawHttp(plan.host, plan.port) for _ in range(plan.connections)]
    for c in conns:
        c.connect()
    ready.release()
    go.wait()
    start = start_at.value
    end = start + plan.duration
    cpu0 = _cpu()
    lock = threading.Lock()
    quota = itertools.count()  # next() is atomic under the GIL
    shared: dict[str, Any] = {"lat": array("d"), "st": Counter(), "win_req": 0, "win_rows": 0,
                              "rows": 0, "err": [], "late": 0.0}

    def loop(index: int, conn: RawHttp) -> None:
        lat = array("d")
        statuses: Counter = Counter()
        win_req = win_rows = rows = 0
        errors: list[str] = []
        late_max = 0.0
        heads = {len(stamp(t, 0)): conn.head("POST", TASKS_PATH, len(stamp(t, 0))) for t in templates}
        number = index
        step = plan.connections
        interval = plan.connections / plan.rate if plan.rate else 0.0
        due = start + (index / plan.connections) * interval if interval else start
        _sleep_until(due)
        while True:
            if interval:
                now = time.monotonic()
                if due >= end:
                    break
                if now < due:
                    _sleep_until(due)
                else:
                    late_max = max(late_max, now - due)
                t0 = due
            else:
                t0 = time.monotonic()
                if t0 >= end:
                    break
            if plan.max_requests and next(quota) >= plan.max_requests:
                break
            body = stamp(templates[number % len(templates)], number)
            head = heads[len(body)]
            number += step
            try:
                status, answer = conn.request(head, body)
            except OSError as exc:
                statuses["conn-error"] += 1
                if len(errors) < 5:
                    errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                time.sleep(0.05)
                status = 0
            t1 = time.monotonic()
            if status:
                statuses[str(status)] += 1
                lat.append((t1 - t0) * 1000)
                if status == 202:
                    rows += TASKS_PER_REQUEST
                    if t1 <= end:
                        win_req += 1
                        win_rows += TASKS_PER_REQUEST
                elif len(errors) < 5:
                    errors.append(f"{status}: {answer[:300]!r}")
            if interval:
                due += interval
        with lock:
            shared["lat"].extend(lat)
            shared["st"].update(statuses)
            shared["win_req"] += win_req
            shared["win_rows"] += win_rows
            shared["rows"] += rows
            shared["err"].extend(errors)
            shared["late"] = max(shared["late"], late_max * 1000)

    # Each thread numbers its requests index, index + step, ... inside this
    # process; the tag keeps processes and phases apart.
    threads = [threading.Thread(target=loop, args=(i, c), daemon=True) for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(plan.duration + 120)
    cpu = _cpu() - cpu0
    for c in conns:
        c.close()
    return ClientResult(plan.tag, shared["lat"].tolist(), dict(shared["st"]), shared["win_req"],
                        shared["win_rows"], shared["rows"], cpu, shared["err"][:5], shared["late"])


def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)


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


def cpu_count() -> int:
    return os.cpu_count() or 1
