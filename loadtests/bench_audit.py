"""Audit log benchmark (Phase 4): ingest of event batches against task
batches of the same size, then reads of a store of --events events (filtered
lists, full-text search, the NDJSON export and the query worker's RSS
during it), per sink backend (SQLite + FTS5, MariaDB + Mroonga); PASS/FAIL
per goal.

    cd /work/main && .venv/bin/python -m loadtests.bench_audit [--quick] [--sink sqlite|mysql|both]

Per backend, each phase on its own database:

1. Ingest. The real service (`persistence-service run`, 2 ingest workers,
   production flush settings), POST closed loop on the ingest port (the
   service's 8001) over --connections keep-alive connections in --procs
   client processes (loadtests.loadgen.RawHttp), --seconds per phase,
   alternating event and task phases (--rounds times each; the spool is
   drained with POST /flush between phases). Event bodies: 100 realistic
   events (mixed English/Chinese messages, details with a few string
   fields, ip, user agent, request id; event_id sent, occurred_at left to
   the service). Task bodies: loadtests.bodies tasks, as many as fit in the
   event body's size, the last one's context padded so both bodies have the
   same number of bytes. Goal: events/s >= task rows/s (both counted from
   202 answers received inside the window). Answers other than 202 (e.g.
   429 from spool.max_lag) are counted and printed; after one the
   connection waits 50 ms. Then one more event + task round with
   spool.max_lag = 0 (--lag-off, default except with --quick; not a goal):
   what ingest acknowledges when the flusher's pace does not count. The
   handler's in-process CPU per body is printed for both kinds.
2. Fill. --events events (default 1,000,000) written straight into the
   sink's database with the flusher's own code: persistence_api.audit.complete,
   plugins.tables.AUDIT_TABLE.to_row, Sink.write([TableRows(AUDIT_TABLE,
   rows)]) in batches of 1000 (one transaction each), before the service
   starts. occurred_at spreads the events over the 90 days before the run.
   The fill rate counts the time in Sink.write only (generation is timed
   apart).
3. Reads, with the service running on that database, one request at a time
   from this process (httpx, keep-alive) to the query port (the service's
   8002): --requests filtered lists (actor_id + action + outcome=failure +
   a 14-day from/to window around a stored failure, drawn with the events'
   own frequencies, limit 100), goal p95 < 20 ms; --requests searches each
   for an English word, a Chinese 2-character and a Chinese 3-character
   word (their share of the events and the matches on the first page are
   printed), goal p95 < 50 ms (two rarer words, ~1.5% and ~0.8% of events,
   are measured too, not goals); the NDJSON export of every event (events
   counted in the stream), goal >= 50,000 events/s, and the peak RSS of the
   query worker that served it (VmRSS of every query worker sampled every
   50 ms, and its VmHWM reset before), goal < 150 MiB. For the slowest
   request of each kind the SQL the backend runs is timed in-process and
   EXPLAINed (MySQL searches: the bounded scan and the index statement).
   GET /audit/verify is timed (not a goal). Correctness is checked on the
   way: filtered lists fit their filter, newest first; every page of every
   search word, walked by cursor, holds the word, without repeats, as many
   events as the fill stored holding it; the export has every event.

SQLite: a file in the run's temporary folder. MySQL: the shared MariaDB on
127.0.0.1:3306 (--mysql), in databases `bench_audit_<random>_ingest` and
`bench_audit_<random>`, dropped at the end. Every process started runs in
its own process group and is killed with it; the temporary folder is
removed, also on Ctrl-C, SIGTERM or an exception.
"""

from __future__ import annotations

import argparse
import contextlib
import json as stdjson
import math
import multiprocessing as mp
import os
import random
import resource
import secrets
import shutil
import signal
import sqlite3
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import msgspec
import pymysql

from persistence_api.audit import AuditEvent, complete
from core.settings import SinkSettings
from core.times import from_us, iso_z, now_us
from loadtests.bodies import PLACEHOLDER, SESSIONS_PATH, TASKS_PATH, sessions_body, session_ids, task_record
from loadtests.loadgen import RawHttp
from loadtests.procstat import CpuWindow, proc_cpu_s, roles_of, status_kib, wait_quiet
from plugins.tables import AUDIT_TABLE, TableRows
from testkit.procs import descendants
from testkit.service import Service

HOST = "127.0.0.1"
EVENTS_PATH = "/api/v1/audit/events/batch"
LIST_PATH = "/api/v1/audit/events"
EXPORT_PATH = "/api/v1/audit/export"
VERIFY_PATH = "/api/v1/audit/verify"
FLUSH_PATH = "/api/v1/translation/flush"
EVENTS_PER_REQUEST = 100
FILL_BATCH = 1000
SPAN_DAYS = 90
WINDOW_DAYS = 14
LIST_P95_GOAL_MS = 20.0
SEARCH_P95_GOAL_MS = 50.0
EXPORT_RATE_GOAL = 50_000.0
RSS_GOAL_MIB = 150.0
DAY_US = 86_400 * 1_000_000
# The search words: an English word, a Chinese word of 2 and of 3 characters.
WORDS = (("english", "translation"), ("chinese 2 chars", "翻译"), ("chinese 3 chars", "术语表"))
# Rarer words, measured too (not goals): a search that a page does not fill in the first
# rows it looks at (the MySQL backend then goes to its Mroonga index).
EXTRA_WORDS = (("extra: rarer chinese 2 chars", "失败"), ("extra: rare english", "rejected"))
ALL_WORDS = WORDS + EXTRA_WORDS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sink", choices=("sqlite", "mysql", "both"), default="both")
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the store for the reads")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each ingest phase")
    parser.add_argument("--rounds", type=int, default=2, help="event + task ingest phases, alternating, per backend")
    parser.add_argument("--connections", type=int, default=12, help="closed-loop connections (ingest)")
    parser.add_argument("--procs", type=int, default=2, help="client processes (ingest)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per read kind")
    parser.add_argument("--mysql", default="mysql://root@127.0.0.1:3306", help="the MariaDB server (with Mroonga)")
    parser.add_argument("--phases", default="ingest,fill,reads", help="subset of ingest,fill,reads (reads needs fill)")
    parser.add_argument("--lag-off", action=argparse.BooleanOptionalAction, default=None,
                        help="also one event + task round with spool.max_lag = 0 (default: on, off with --quick)")
    parser.add_argument("--no-verify", action="store_true", help="skip timing GET /audit/verify")
    parser.add_argument("--wait-quiet", type=float, default=20.0,
                        help="wait at most this long before each phase for other jobs to leave the machine idle")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and the MySQL databases")
    parser.add_argument("--quick", action="store_true", help="100,000 events, 5 s ingest phases, one round, "
                                                             "100 requests per read kind")
    args = parser.parse_args(argv)
    if args.quick:
        args.events = min(args.events, 100_000)
        args.seconds, args.rounds, args.requests = 5.0, 1, 100
        args.wait_quiet = min(args.wait_quiet, 2.0)  # one 2 s look at the machine, no waiting
    if args.lag_off is None:
        args.lag_off = not args.quick
    args.phases = set(args.phases.split(","))
    return args


def announce(what: str) -> None:
    one, five, _ = os.getloadavg()
    print(f"[{time.strftime('%H:%M:%S')}] {what} (load average {one:.2f} {five:.2f}, {os.cpu_count()} cores)",
          flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


# -- realistic events ---------------------------------------------------------------

_GAMES = (("Chronicles of Ember", "余烬编年史"), ("Star Harbor", "星港"), ("Moonlit Caravan", "月下商队"),
          ("Iron Bastion", "钢铁堡垒"), ("Jade Mountain Saga", "玉山传说"))
_SHEETS = ("Dialogue", "Items", "Quests", "UI", "Skills", "Achievements")
_PROVIDERS = ("openai", "qwen", "deepseek", "claude")
_TERMS = (("Frostbrand Sword", "霜刃之剑"), ("Moonstone", "月光石"), ("Elder Rowan", "长老罗文"),
          ("Northern Gate", "北门"), ("Master Alchemist", "大师级炼金术士"), ("Fire Elemental", "火元素"),
          ("Stamina", "体力"), ("Treasure Chest", "宝箱"), ("Main Menu", "主菜单"), ("Guild Hall", "公会大厅"))
_CJK_SNIPPETS = ("商队将在黎明出发", "请把密封的信交给北门的队长", "对火元素造成额外伤害", "你收集的月光石还不够",
                 "在村庄广场与长老罗文交谈", "背包已满", "返回主菜单将丢失未保存的进度", "任务已更新",
                 "体力会在行走时恢复", "夜幕降临之前")
_REASONS_EN = ("placeholder {0} missing", "term does not match the glossary", "text too long for the UI box",
               "wrong tone for the character", "untranslated English left")
_REASONS_ZH = ("占位符 {0} 缺失", "译名与术语不一致", "文本超出界面长度", "语气与角色不符", "仍有未翻译的英文")
_AGENTS = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
           "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
           "translator-backend/2.7.1 (python-httpx/0.28)", "ops-cli/1.4", "curl/8.5.0")
_ROLES = ("translator", "reviewer", "admin", "viewer")
_STATUSES = ("pending", "processing", "completed", "failed")
# action: (weight, resource_type, failure share, who: user | backend | system)
_ACTIONS = {
    "task.translate": (24, "task", 0.04, "backend"),
    "task.review": (10, "task", 0.15, "user"),
    "session.export": (6, "session", 0.03, "user"),
    "session.status": (6, "session", 0.02, "system"),
    "file.upload": (8, "file", 0.03, "user"),
    "file.download": (6, "file", 0.02, "user"),
    "user.authenticate": (14, "user", 0.12, "user"),
    "user_session.create": (8, "user_session", 0.01, "user"),
    "glossary.update": (3, "glossary", 0.05, "user"),
    "llm.request": (8, "llm", 0.18, "backend"),
    "qa.check": (4, "session", 0.3, "backend"),
    "user.update": (1, "user", 0.05, "user"),
    "session.delete": (1, "session", 0.02, "user"),
    "project.create": (1, "project", 0.02, "user"),
}
USERS = 3000


class EventMaker:
    """Deterministic realistic events (as dicts of AuditEvent fields)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.actions = list(_ACTIONS)
        self.action_weights = [_ACTIONS[a][0] for a in self.actions]
        # Zipf-like activity of users: a few very active translators, a long tail.
        self.users = [f"u-{k:05d}" for k in range(USERS)]
        self.user_weights = [1.0 / (k + 1) ** 1.07 for k in range(USERS)]
        self._cum_actions = _cumulative(self.action_weights)
        self._cum_users = _cumulative(self.user_weights)

    def _pick(self, items: list[str], cumulative: list[float]) -> str:
        return items[_bisect(cumulative, self.rng.random() * cumulative[-1])]

    def event(self) -> dict[str, Any]:
        rng = self.rng
        action = self._pick(self.actions, self._cum_actions)
        _, resource_type, failure_share, who = _ACTIONS[action]
        failed = rng.random() < failure_share
        user = self._pick(self.users, self._cum_users)
        if who == "backend":
            actor_id, actor_type = ("translator-backend", "service") if rng.random() < 0.85 else (user, "user")
        elif who == "system":
            actor_id, actor_type = ("scheduler", "system") if rng.random() < 0.7 else (user, "user")
        else:
            actor_id, actor_type = user, "user"
        chinese = rng.random() < 0.5
        game_en, game_zh = rng.choice(_GAMES)
        sheet = rng.choice(_SHEETS)
        session = f"s-{rng.randrange(16**8):08x}-{rng.randrange(16**4):04x}"
        details: dict[str, Any] = {"project": game_zh if chinese else game_en, "client": rng.choice(("web", "api", "cli"))}
        message, resource_id = self._message(action, failed, chinese, rng, user, session, sheet, details)
        event: dict[str, Any] = {
            "actor_id": actor_id, "actor_type": actor_type, "action": action, "resource_type": resource_type,
            "resource_id": resource_id, "outcome": "failure" if failed else "success",
            "ip": f"10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            "user_agent": _AGENTS[2] if actor_type == "service" else rng.choice(_AGENTS),
            "request_id": f"{rng.getrandbits(128):032x}", "message": message, "details": details,
        }
        return event

    def _message(self, action: str, failed: bool, zh: bool, rng: random.Random, user: str, session: str,
                 sheet: str, details: dict[str, Any]) -> tuple[str, str]:
        row = rng.randrange(2, 5000)
        provider = rng.choice(_PROVIDERS)
        term_en, term_zh = rng.choice(_TERMS)
        if action == "task.translate":
            details.update(sheet=sheet, source=rng.choice(_CJK_SNIPPETS) if zh else term_en)
            task = f"{session}-{sheet[:3].lower()}-{row:05d}"
            if failed:
                code = rng.choice(("429 Too Many Requests", "502 Bad Gateway", "a timeout"))
                return (f"机器翻译失败：第 {row} 行，{provider} 返回 {code}" if zh else
                        f"Machine translation failed for row {row}: {provider} returned {code}"), task
            if rng.random() < 0.5:
                return (f"机器翻译完成：{sheet} 第 {row} 行，共 {rng.randrange(4, 400)} 字（{provider}）" if zh else
                        f"Machine translation finished for row {row} of {sheet} "
                        f"({rng.randrange(4, 400)} characters, {provider})"), task
            return (f"第 {row} 行已由 {provider} 译完，用时 {rng.randrange(300, 9000)} 毫秒" if zh else
                    f"Row {row} of {sheet} translated by {provider} in {rng.randrange(300, 9000)} ms"), task
        if action == "task.review":
            task = f"{session}-{sheet[:3].lower()}-{row:05d}"
            if failed:
                reason = (rng.choice(_REASONS_ZH) if zh else rng.choice(_REASONS_EN)).format("{0}")
                details.update(reason=reason)
                return (f"审校退回：第 {row} 行，{reason}" if zh else
                        f"Reviewer rejected row {row} of {sheet}: {reason}"), task
            return (f"审校通过：第 {row} 行「{term_zh}」的译文已确认" if zh else
                    f"Reviewer approved the translation of \"{term_en}\" in row {row}"), task
        if action == "session.export":
            fmt, rows = rng.choice(("xlsx", "csv", "json")), rng.randrange(20, 20000)
            details.update(format=fmt, file=f"{sheet.lower()}_zh-CN.{fmt}")
            if failed:
                return (f"导出会话 {session} 失败：磁盘空间不足" if zh else
                        f"Export of session {session} failed: disk full"), session
            return (f"导出会话 {session}，共 {rows} 行（{fmt}）" if zh else
                    f"Exported session {session} to {fmt} ({rows} rows)"), session
        if action == "session.status":
            a, b = rng.sample(_STATUSES, 2)
            return (f"会话 {session} 状态由 {a} 改为 {b}" if zh else
                    f"Session {session} status changed from {a} to {b}"), session
        if action in ("file.upload", "file.download"):
            name = f"{rng.choice(('dialogue', 'items', 'quests', '剧情', '道具'))}_{rng.randrange(1, 90):02d}.xlsx"
            file_id = f"f-{rng.getrandbits(64):016x}"
            details.update(file=name)
            if action == "file.upload":
                if failed:
                    return (f"上传文件 {name} 失败：超过大小上限" if zh else
                            f"Upload of {name} refused: larger than the limit"), file_id
                return (f"上传文件 {name}（{rng.randrange(8, 9000)} KB）" if zh else
                        f"Uploaded {name} ({rng.randrange(8, 9000)} KB)"), file_id
            return (f"下载文件 {name}" if zh else f"Downloaded {name}"), file_id
        if action == "user.authenticate":
            if failed:
                details.update(reason="wrong password" if rng.random() < 0.8 else "account disabled")
                return (f"用户 {user} 登录失败：密码错误" if zh else f"Login failed for {user}: wrong password"), user
            return (f"用户 {user} 登录成功" if zh else f"Login succeeded for {user}"), user
        if action == "user_session.create":
            return (f"为用户 {user} 创建登录会话" if zh else
                    f"Login session opened for {user} (idle {rng.choice((900, 1800, 3600))} s)"), user
        if action == "glossary.update":
            details.update(glossary=f"《{rng.choice(_GAMES)[1]}》术语表", term=term_en)
            return (f"术语表已更新：{term_en} → {term_zh}" if zh else
                    f"Glossary term updated: {term_en} -> {term_zh}"), f"g-{rng.randrange(200):03d}"
        if action == "llm.request":
            ms, tokens = rng.randrange(200, 30000), rng.randrange(50, 4000)
            details.update(model=f"{provider}-{rng.choice(('large', 'mini'))}")
            if failed:
                return (f"调用 {provider} 大模型超时（{ms} 毫秒）" if zh else
                        f"LLM request to {provider} timed out after {ms} ms"), f"r-{rng.getrandbits(48):012x}"
            return (f"调用 {provider} 大模型用时 {ms} 毫秒（{tokens} tokens）" if zh else
                    f"LLM request to {provider} took {ms} ms ({tokens} tokens)"), f"r-{rng.getrandbits(48):012x}"
        if action == "qa.check":
            n = rng.randrange(1, 40)
            if zh:
                return f"质检：{sheet} 有 {n} 处译文与术语表不一致", session
            return f"Quality check found {n} untranslated placeholders in {sheet}", session
        if action == "user.update":
            role = rng.choice(_ROLES)
            return (f"用户 {user} 的角色已改为 {role}" if zh else f"Changed role of {user} to {role}"), user
        if action == "session.delete":
            n = rng.randrange(10, 5000)
            return (f"删除会话 {session} 及其 {n} 个任务" if zh else f"Deleted session {session} and {n} tasks"), session
        game_en, game_zh = rng.choice(_GAMES)
        return (f"新建项目《{game_zh}》" if zh else f"Created project {game_en}"), f"p-{rng.randrange(1000):04d}"


def _cumulative(weights: Sequence[float]) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


def _bisect(cumulative: list[float], x: float) -> int:
    lo, hi = 0, len(cumulative) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cumulative[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def searched_text(event: dict[str, Any]) -> str:
    """What search looks in (plugins/audit/text.search_text), case-folded: message + string values of details."""
    parts = [event["message"]] + [v for v in event["details"].values() if isinstance(v, str)]
    return "\n".join(parts).casefold()


# -- request bodies of the ingest phase --------------------------------------------------


def event_body(tag: str, maker: EventMaker) -> bytes:
    events = []
    for i in range(EVENTS_PER_REQUEST):
        e = maker.event()
        events.append({"event_id": f"{tag}-{PLACEHOLDER.decode()}-{i:03d}", **e})
    body = msgspec.json.encode({"events": events})
    assert body.count(PLACEHOLDER) == EVENTS_PER_REQUEST
    return body


_PAD = b" The caravan leaves at dawn; bring the sealed letter to the captain of the northern gate."


def task_body_of_size(tag: str, session_id: str, size: int, rng: random.Random) -> tuple[bytes, int]:
    """A task batch (loadtests.bodies tasks) of exactly `size` bytes: as many
    tasks as fit, the last one's context padded with ASCII text."""
    tasks: list[dict[str, Any]] = []
    while True:
        t = task_record(f"{tag}-{PLACEHOLDER.decode()}-{len(tasks):03d}", session_id, len(tasks), rng)
        if tasks and len(msgspec.json.encode({"tasks": [*tasks, t]})) > size:
            break
        tasks.append(t)
    missing = size - len(msgspec.json.encode({"tasks": tasks}))
    pad = (_PAD * (missing // len(_PAD) + 1))[:missing].decode()
    tasks[-1]["context"] = (tasks[-1]["context"] or "") + pad
    body = msgspec.json.encode({"tasks": tasks})
    if len(body) != size:  # a pad that ends in a space JSON-escapes the same: can only happen if the encoder escapes
        raise RuntimeError(f"task body is {len(body)} bytes, wanted {size}")
    assert body.count(PLACEHOLDER) == len(tasks)
    return body, len(tasks)


# -- the load client (forked processes, raw keep-alive sockets) -------------------------------


class Load(msgspec.Struct, frozen=True):
    port: int
    path: str
    templates: list[list[bytes]]  # bodies split at PLACEHOLDER; request n stamps n into its template
    rows: int  # items per request
    connections: int
    duration: float
    base: int = 0  # added to every request number


class Tally(msgspec.Struct):
    latencies_ms: list[float] = []
    requests_in_window: int = 0
    accepted: int = 0  # every 202, in the window or just after it
    statuses: dict[str, int] = {}
    errors: list[str] = []
    cpu_s: float = 0.0


def _connection(load: Load, index: int, start: float, out: Tally, lock: threading.Lock) -> None:
    conn = RawHttp(HOST, load.port, timeout=60)
    heads: dict[int, bytes] = {}
    lat: list[float] = []
    statuses: Counter[str] = Counter()
    errors: list[str] = []
    in_window = accepted = 0
    end = start + load.duration
    number = load.base + index
    time.sleep(max(0.0, start - time.monotonic()))
    while (t0 := time.monotonic()) < end:
        body = (b"%010d" % number).join(load.templates[(number - load.base) // load.connections % len(load.templates)])
        number += load.connections
        head = heads.get(len(body)) or heads.setdefault(len(body), conn.head("POST", load.path, len(body)))
        try:
            status, answer = conn.request(head, body)
        except OSError as exc:
            statuses["conn-error"] += 1
            if len(errors) < 3:
                errors.append(f"{type(exc).__name__}: {exc}")
            conn.close()
            time.sleep(0.05)
            continue
        t1 = time.monotonic()
        statuses[str(status)] += 1
        if status != 202:
            if len(errors) < 3:
                errors.append(f"{status}: {answer[:200]!r}")
            time.sleep(0.05)  # a refused batch (429: spool.max_lag): back off a little, as a client would
            continue
        lat.append((t1 - t0) * 1000)
        accepted += 1
        if t1 <= end:
            in_window += 1
    conn.close()
    with lock:
        out.latencies_ms.extend(lat)
        out.requests_in_window += in_window
        out.accepted += accepted
        for k, v in statuses.items():
            out.statuses[k] = out.statuses.get(k, 0) + v
        out.errors = (out.errors + errors)[:5]


def _client(load: Load, start: Any, go: Any, pipe: Any) -> None:
    out = Tally(latencies_ms=[], statuses={}, errors=[])
    try:
        lock = threading.Lock()
        go.wait()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        threads = [threading.Thread(target=_connection, args=(load, i, start.value, out, lock))
                   for i in range(load.connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out.cpu_s = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    except BaseException as exc:  # reported to the parent
        out.errors = [f"client crashed: {type(exc).__name__}: {exc}"]
        out.statuses = {"crash": 1}
    pipe.send_bytes(msgspec.msgpack.encode(out))
    pipe.close()


@dataclass
class IngestResult:
    kind: str  # events | tasks
    round: int
    rows_per_request: int
    body_bytes: int
    duration: float
    requests: int
    rows_per_s: float
    latencies_ms: list[float]
    statuses: dict[str, int]
    errors: list[str]
    cpu: str
    drain_s: float = 0.0  # from the end of the load until /flush answered 200
    accepted_rows: int = 0  # every 202 of the phase

    @property
    def drain_rate(self) -> float:
        """Rows the flusher stored per second from the load's start until the spool was empty."""
        return self.accepted_rows / (self.duration + self.drain_s)

    @property
    def refused(self) -> int:
        return sum(v for k, v in self.statuses.items() if k != "202")


def run_load(kind: str, rnd: int, loads: list[Load], groups: dict[str, list[int]], body_bytes: int) -> IngestResult:
    ctx = mp.get_context("fork")
    go = ctx.Event()
    start = ctx.Value("d", 0.0)
    children, pipes = [], []
    for load in loads:
        receiver, sender = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_client, args=(load, start, go, sender), daemon=True)
        p.start()
        sender.close()
        children.append(p)
        pipes.append(receiver)
    time.sleep(0.3)
    window = CpuWindow({**groups, "client": [p.pid for p in children if p.pid]})
    start.value = time.monotonic() + 0.1
    window.start()
    go.set()
    total = Tally(latencies_ms=[], statuses={}, errors=[])
    duration = loads[0].duration
    try:
        for pipe in pipes:
            if not pipe.poll(duration + 120):
                raise RuntimeError(f"{kind}: a client process did not report")
            t = msgspec.msgpack.decode(pipe.recv_bytes(), type=Tally)
            total.latencies_ms.extend(t.latencies_ms)
            total.requests_in_window += t.requests_in_window
            total.accepted += t.accepted
            for k, v in t.statuses.items():
                total.statuses[k] = total.statuses.get(k, 0) + v
            total.errors = (total.errors + t.errors)[:5]
    finally:
        window.stop()
        for p in children:
            p.join(5)
            if p.is_alive():
                p.kill()
    if "crash" in total.statuses:
        raise RuntimeError(f"{kind}: a client process failed: {total.errors}")
    rows = loads[0].rows
    return IngestResult(kind, rnd, rows, body_bytes, duration, total.requests_in_window,
                        total.requests_in_window * rows / duration, sorted(total.latencies_ms), total.statuses,
                        total.errors, window.line(), accepted_rows=total.accepted * rows)


# -- backends -------------------------------------------------------------------------------


class Cleanup:
    """What a run started and made, removed at the end whatever happens."""

    def __init__(self, folder: Path, keep: bool) -> None:
        self.folder = folder
        self.keep = keep
        self.services: list[Service] = []
        self.databases: list[tuple[str, str]] = []  # (server url, database)

    def service(self, service: Service) -> Service:
        self.services.append(service)
        return service

    def stop(self, service: Service) -> None:
        service.kill()
        if service in self.services:
            self.services.remove(service)

    def close(self) -> None:
        for service in list(self.services):
            try:
                service.kill()
            except Exception as exc:  # noqa: BLE001 - the rest must still go
                print(f"could not kill the service: {exc!r}")
        if self.keep:
            print(f"kept: {self.folder}, MySQL databases {[d for _, d in self.databases]}")
            return
        for server, database in self.databases:
            try:
                with contextlib.closing(mysql_connect(server)) as conn, conn.cursor() as cur:
                    cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
            except Exception as exc:  # noqa: BLE001
                print(f"could not drop {database}: {exc!r}")
        shutil.rmtree(self.folder, ignore_errors=True)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def mysql_connect(server: str, database: str | None = None) -> pymysql.connections.Connection:
    url = urlsplit(server)
    return pymysql.connect(host=url.hostname or HOST, port=url.port or 3306, user=url.username or "root",
                           password=url.password or "", database=database, charset="utf8mb4", autocommit=True)


@dataclass
class Backend:
    name: str  # sqlite | mysql
    args: argparse.Namespace
    cleanup: Cleanup
    run_tag: str

    def url(self, label: str) -> str:
        if self.name == "sqlite":
            return f"sqlite:///{self.cleanup.folder / self.name / label / 'store.db'}"
        database = f"bench_audit_{self.run_tag}" + ("" if label == "reads" else f"_{label}")
        self.cleanup.databases.append((self.args.mysql, database))
        with contextlib.closing(mysql_connect(self.args.mysql)) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        return f"{self.args.mysql}/{database}"

    def sink(self, url: str) -> Any:
        settings = SinkSettings(url=url, connect_timeout=10.0)
        if self.name == "sqlite":
            from plugins.sqlite import SqliteSink
            return SqliteSink.connect(settings)
        from plugins.mysql import MysqlSink
        return MysqlSink.connect(settings)

    def describe(self) -> str:
        if self.name == "sqlite":
            return f"SQLite {sqlite3.sqlite_version} (FTS5), file in {self.cleanup.folder}"
        with contextlib.closing(mysql_connect(self.args.mysql)) as conn, conn.cursor() as cur:
            cur.execute("SELECT @@version, @@innodb_buffer_pool_size, @@innodb_flush_log_at_trx_commit,"
                        " @@max_allowed_packet")
            version, pool, flush, packet = cur.fetchone()
            cur.execute("SELECT PLUGIN_VERSION FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'Mroonga'")
            mroonga = cur.fetchone()
            cur.execute("SHOW VARIABLES LIKE 'mroonga_version'")
            mv = cur.fetchone()
        return (f"MariaDB {version} (shared server {self.args.mysql}), Mroonga "
                f"{mv[1] if mv else (mroonga[0] if mroonga else 'not loaded')}, innodb_buffer_pool_size "
                f"{pool // 1024 // 1024} MiB, innodb_flush_log_at_trx_commit={flush}, "
                f"max_allowed_packet {packet // 1024 // 1024} MiB")

    def groups(self, service: Service) -> dict[str, list[int]]:
        """The service's processes by role; with MySQL also the server's (shared: other jobs' queries count too)."""
        assert service.proc is not None
        groups = roles_of(service.proc.pid)
        if self.name == "mysql":
            groups["mariadbd (shared)"] = [int(e.name) for e in os.scandir("/proc")
                                           if e.name.isdigit() and _comm(int(e.name)) == "mariadbd"]
        return groups

    def store_size(self, url: str) -> str:
        if self.name == "sqlite":
            path = Path(url[len("sqlite:///"):])
            size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
            return f"{size / 1024 / 1024:,.0f} MiB (database file + WAL)"
        database = urlsplit(url).path.strip("/")
        with contextlib.closing(mysql_connect(self.args.mysql)) as conn, conn.cursor() as cur:
            cur.execute("SELECT table_name, engine, data_length + index_length FROM information_schema.TABLES"
                        " WHERE table_schema = %s AND table_name LIKE 'audit%%'", (database,))
            rows = cur.fetchall()
        parts = ", ".join(f"{name} ({engine}) {size / 1024 / 1024:,.0f} MiB" for name, engine, size in rows)
        return f"{sum(r[2] for r in rows) / 1024 / 1024:,.0f} MiB: {parts}"


def start_service(backend: Backend, label: str, sink_url: str, **overrides: Any) -> Service:
    folder = backend.cleanup.folder / backend.name / f"svc-{label}"
    # Production settings where the harness has test values: flush delay, spool size, query workers.
    options: dict[str, Any] = dict(max_delay=1.0, query_workers=0, spool_max_bytes=1024 ** 3, flush_timeout=10.0)
    service = backend.cleanup.service(Service(folder, sink_url, **{**options, **overrides}))
    service.start()
    return service


def quiet(args: argparse.Namespace, what: str, ours: list[int]) -> None:
    text = wait_quiet(args.wait_quiet, ours)
    announce(f"{what}; machine before it: {text}")


def tree(service: Service) -> list[int]:
    assert service.proc is not None
    return [service.proc.pid, *descendants(service.proc.pid)]


def drain(service: Service, timeout: float = 900.0) -> float:
    """POST /flush until it answers 200; seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        r = service.http.post(FLUSH_PATH, timeout=60)
        if r.status_code == 200:
            return time.monotonic() - started
        if r.status_code not in (503,):
            raise RuntimeError(f"/flush answered {r.status_code}: {r.text[:300]}")
    raise RuntimeError(f"the spool did not drain within {timeout} s: {service.tail(10)}")


# -- 1. ingest ------------------------------------------------------------------------------


@dataclass
class IngestFigures:
    event_bytes: list[int]
    task_bytes: list[int]
    tasks_per_request: list[int]
    results: list[IngestResult] = field(default_factory=list)
    handler_us: dict[str, float] = field(default_factory=dict)

    def rate(self, kind: str) -> float:
        values = [r.rows_per_s for r in self.results if r.kind == kind]
        return statistics.mean(values) if values else float("nan")

    def latencies(self, kind: str) -> list[float]:
        return sorted(v for r in self.results if r.kind == kind for v in r.latencies_ms)


def ingest_phase(args: argparse.Namespace, backend: Backend, lag_off: bool = False) -> IngestFigures:
    """Event and task phases alternating; lag_off: one round with spool.max_lag = 0 (no 429 for a
    backlog), which shows what ingest itself acknowledges when the flusher's pace does not count."""
    procs = max(1, min(args.procs, args.connections))
    split = [args.connections // procs + (i < args.connections % procs) for i in range(procs)]
    maker = EventMaker(seed=7)
    rng = random.Random(8)
    # Per client process: 8 event bodies and, for each, a task body of the same size (tags of equal length).
    event_loads_t: list[list[bytes]] = []
    task_loads_t: list[list[bytes]] = []
    sessions: list[bytes] = []
    figures = IngestFigures([], [], [])
    for p in range(procs):
        ev, tk = [], []
        sids = session_ids(f"tk{p}", 8)
        sessions.append(sessions_body(f"tk{p}", 8))
        for k in range(8):
            body = event_body(f"ev{p}", maker)
            task, count = task_body_of_size(f"tk{p}", sids[k], len(body), rng)
            figures.event_bytes.append(len(body))
            figures.task_bytes.append(len(task))
            figures.tasks_per_request.append(count)
            ev.append(body)
            tk.append(task)
        event_loads_t.append(ev)
        task_loads_t.append(tk)
    figures.handler_us = {} if lag_off else handler_cost(event_loads_t[0][0], task_loads_t[0][0])
    if figures.handler_us:
        print(f"  one {len(event_loads_t[0][0]):,} B body, in-process CPU (median us): "
              + ", ".join(f"{k} {v:,.0f}" for k, v in figures.handler_us.items()), flush=True)
    label = "ingest_nolag" if lag_off else "ingest"
    overrides = {"max_lag": 0.0} if lag_off else {}
    service = start_service(backend, label, backend.url(label), **overrides)
    try:
        for body in sessions:
            r = service.http.post(SESSIONS_PATH, content=body, headers={"content-type": "application/json"})
            if r.status_code != 202:
                raise RuntimeError(f"posting sessions answered {r.status_code}: {r.text[:300]}")
        groups = backend.groups(service)
        # Warm-up: a second of each, then drained.
        for kind, templates in (("events", event_loads_t), ("tasks", task_loads_t)):
            loads = [Load(service.ingest_port, EVENTS_PATH if kind == "events" else TASKS_PATH,
                          [t.split(PLACEHOLDER) for t in templates[p]], EVENTS_PER_REQUEST, split[p], 1.0)
                     for p in range(procs)]
            run_load(kind, -1, loads, groups, 0)
        drain(service)
        for rnd in range(1 if lag_off else args.rounds):
            for kind, templates in (("events", event_loads_t), ("tasks", task_loads_t)):
                quiet(args, f"{backend.name}: ingest {kind}, round {rnd + 1}"
                      + (", spool.max_lag = 0 (off)" if lag_off else ""), tree(service))
                loads = []
                for p in range(procs):
                    parts = [t.split(PLACEHOLDER) for t in templates[p]]
                    rows = EVENTS_PER_REQUEST if kind == "events" else len(parts[0]) - 1
                    # Every round stamps numbers of its own: ids never repeat.
                    loads.append(Load(service.ingest_port, EVENTS_PATH if kind == "events" else TASKS_PATH,
                                      parts, rows, split[p], args.seconds, base=(rnd + 1) * 100_000_000))
                size = statistics.mean(figures.event_bytes if kind == "events" else figures.task_bytes)
                result = run_load(kind, rnd, loads, groups, round(size))
                result.drain_s = drain(service)
                figures.results.append(result)
                show_ingest(result)
    finally:
        backend.cleanup.stop(service)
    return figures


def handler_cost(event_template: bytes, task_template: bytes, reps: int = 300) -> dict[str, float]:
    """CPU of the ingest handler's own work on one body, in-process (median us of `reps`): what
    ingest.routes.batch_endpoint does before the spool append (validate_batch; for events also the
    second decode, complete and the re-encode)."""
    from core.kinds import AUDIT_EVENTS, TASKS
    from ingest.validation import validate_batch
    events = event_template.replace(PLACEHOLDER, b"0000000001")
    tasks = task_template.replace(PLACEHOLDER, b"0000000001")

    def median_us(fn: Any) -> float:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e6

    def event_handler() -> None:
        validate_batch(AUDIT_EVENTS, events)
        records = AUDIT_EVENTS.decode(events)
        complete(records, now_us())
        AUDIT_EVENTS.encode_batch(records)

    decoded = AUDIT_EVENTS.decode(events)
    return {"tasks: validate_batch": median_us(lambda: validate_batch(TASKS, tasks)),
            "events: validate_batch": median_us(lambda: validate_batch(AUDIT_EVENTS, events)),
            "events: second decode (kind.decode)": median_us(lambda: AUDIT_EVENTS.decode(events)),
            "events: encode_batch": median_us(lambda: AUDIT_EVENTS.encode_batch(decoded)),
            "events: whole handler work": median_us(event_handler),
            "events: plain msgspec.json.decode (no types)": median_us(lambda: msgspec.json.decode(events))}


def show_ingest(r: IngestResult) -> None:
    refused = f", NOT 202: {r.refused} {r.statuses} first {r.errors[:2]}" if r.refused else ""
    print(f"  {r.kind:<6} round {r.round + 1}: {r.rows_per_s:,.0f} {r.kind[:-1]} rows/s acknowledged "
          f"({r.requests:,} x 202 of {r.rows_per_request} in {r.duration:g} s, {r.body_bytes:,} B bodies); "
          f"ack p50 {pct(r.latencies_ms, .5):.1f} ms, p99 {pct(r.latencies_ms, .99):.1f} ms{refused}; "
          f"spool drained {r.drain_s:.1f} s after the load (flusher: {r.accepted_rows:,} rows in "
          f"{r.duration + r.drain_s:.1f} s = {r.drain_rate:,.0f} rows/s)\n    CPU: {r.cpu}", flush=True)


# -- 2. fill --------------------------------------------------------------------------------


@dataclass
class FillFigures:
    events: int
    write_s: float
    wall_s: float
    gen_s: float
    store: str
    word_share: dict[str, float]
    failures: list[tuple[str, str, int]]  # a reservoir of stored failures: (actor_id, action, occurred_us)
    first_us: int
    last_us: int
    word_hits: dict[str, int] = field(default_factory=dict)
    count_s: float = 0.0
    index_bytes_s: float = 0.0
    index_bytes: int = 0

    @property
    def rate(self) -> float:
        return self.events / self.write_s


def fill_phase(args: argparse.Namespace, backend: Backend, url: str) -> FillFigures:
    sink = backend.sink(url)
    sink.migrate()
    maker = EventMaker(seed=11)
    rng = random.Random(12)
    n = args.events
    end_us = (now_us() // DAY_US) * DAY_US - DAY_US  # midnight yesterday: every event inside retention
    start_us = end_us - SPAN_DAYS * DAY_US
    step = (end_us - start_us) / n
    hits = dict.fromkeys((w for _, w in ALL_WORDS), 0)
    folded = {w: w.casefold() for w in hits}
    reservoir: list[tuple[str, str, int]] = []
    failures_seen = 0
    write_s = gen_s = 0.0
    started = time.monotonic()
    next_report = 0.1
    try:
        for first in range(0, n, FILL_BATCH):
            t0 = time.perf_counter()
            events = []
            for i in range(first, min(n, first + FILL_BATCH)):
                fields = maker.event()
                occurred = int(start_us + i * step + rng.random() * step * 0.9)
                text = searched_text(fields)
                for word, f in folded.items():
                    if f in text:
                        hits[word] += 1
                if fields["outcome"] == "failure":
                    failures_seen += 1
                    item = (fields["actor_id"], fields["action"], occurred)
                    if len(reservoir) < 2000:
                        reservoir.append(item)
                    elif (j := rng.randrange(failures_seen)) < 2000:
                        reservoir[j] = item
                events.append(AuditEvent(**fields, occurred_at=from_us(occurred)))
            accepted = now_us()
            complete(events, accepted)  # what ingest does: the event ids
            rows = [AUDIT_TABLE.to_row(e, 0, accepted) for e in events]
            t1 = time.perf_counter()
            sink.write([TableRows(AUDIT_TABLE, rows)])
            t2 = time.perf_counter()
            gen_s += t1 - t0
            write_s += t2 - t1
            done = first + len(events)
            if done / n >= next_report:
                print(f"  {backend.name} fill: {done:,} events, {done / write_s:,.0f} events/s in Sink.write "
                      f"({time.monotonic() - started:.0f} s)", flush=True)
                next_report += 0.1
    finally:
        sink.close()
    figures = FillFigures(n, write_s, time.monotonic() - started, gen_s, backend.store_size(url),
                          {w: hits[w] / n for w in hits}, reservoir, start_us, end_us, word_hits=dict(hits))
    # What the query process's housekeeping runs every 30 s (audit/housekeeping.py): timed here.
    from plugins.audit import open_audit_log
    log = open_audit_log(SinkSettings(url=url))
    try:
        t0 = time.perf_counter()
        log.count()
        t1 = time.perf_counter()
        figures.index_bytes = log.index_bytes()
        t2 = time.perf_counter()
        figures.count_s, figures.index_bytes_s = t1 - t0, t2 - t1
    finally:
        log.close()
    return figures


# -- 3. reads -------------------------------------------------------------------------------


@dataclass
class Timed:
    label: str
    latencies_ms: list[float]  # sorted
    items: list[int]  # items per answer, in request order
    slowest: dict[str, str]  # the query string of the slowest request
    cpu: str
    statuses: dict[str, int]

    @property
    def bad(self) -> int:
        return sum(v for k, v in self.statuses.items() if k != "200")


@dataclass
class ExportFigures:
    events: int
    seconds: float
    bytes: int
    worker_pid: int
    rss_idle_mib: float
    rss_max_mib: float  # sampled VmRSS of the serving worker
    hwm_mib: float  # its VmHWM, reset before (0: reset not allowed)
    others_max_mib: dict[int, float]
    cpu: str
    samples: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def peak_mib(self) -> float:
        return max(self.rss_max_mib, self.hwm_mib)


@dataclass
class ReadFigures:
    lists: Timed | None = None
    searches: dict[str, Timed] = field(default_factory=dict)
    export: ExportFigures | None = None
    verify: dict[str, Any] = field(default_factory=dict)
    explains: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # answers that break API.md (correctness checks)


def timed_requests(http: httpx.Client, label: str, queries: list[dict[str, str]],
                   groups: dict[str, list[int]]) -> Timed:
    lat: list[float] = []
    items: list[int] = []
    statuses: Counter[str] = Counter()
    slowest: dict[str, str] = {}
    worst = -1.0
    window = CpuWindow({**groups, "bench client": [os.getpid()]})
    window.start()
    for params in queries:
        t0 = time.perf_counter()
        r = http.get(LIST_PATH, params=params)
        body = r.content
        ms = (time.perf_counter() - t0) * 1000
        statuses[str(r.status_code)] += 1
        lat.append(ms)
        items.append(len(msgspec.json.decode(body)["items"]) if r.status_code == 200 else -1)
        if ms > worst:
            worst, slowest = ms, params
    window.stop()
    return Timed(label, sorted(lat), items, slowest, window.line(), dict(statuses))


def filtered_queries(fill: FillFigures, count: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        actor, action, occurred = rng.choice(fill.failures)
        start = occurred - rng.randrange(WINDOW_DAYS) * DAY_US
        start -= start % DAY_US  # a window of whole days, as a UI asks
        out.append({"actor_id": actor, "action": action, "outcome": "failure", "from": iso_z(start)[:10],
                    "to": iso_z(start + WINDOW_DAYS * DAY_US)[:10], "limit": "100"})
    return out


class RssSampler:
    """VmRSS of some pids every `interval` s in a thread: the max of each."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        self.pids = pids
        self.interval = interval
        self.max_mib: dict[int, float] = dict.fromkeys(pids, 0.0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in self.pids:
                self.max_mib[pid] = max(self.max_mib[pid], status_kib(pid, "VmRSS") / 1024)
            self.samples += 1

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def export_all(port: int, groups: dict[str, list[int]]) -> ExportFigures:
    workers = groups.get("query worker", [])
    idle = {pid: status_kib(pid, "VmRSS") / 1024 for pid in workers}
    reset_ok = all(reset_hwm(pid) for pid in workers)
    cpu0 = {pid: proc_cpu_s(pid) for pid in workers}
    window = CpuWindow({**groups, "bench client": [os.getpid()]})
    events = size = 0
    with RssSampler(workers) as sampler, httpx.Client(timeout=httpx.Timeout(1800.0, connect=10.0)) as http:
        window.start()
        t0 = time.perf_counter()
        with http.stream("GET", f"http://{HOST}:{port}{EXPORT_PATH}", params={"format": "ndjson"}) as r:
            if r.status_code != 200:
                raise RuntimeError(f"export answered {r.status_code}: {r.read()[:300]!r}")
            for chunk in r.iter_raw(1 << 20):
                events += chunk.count(b"\n")
                size += len(chunk)
        seconds = time.perf_counter() - t0
        window.stop()
    used = {pid: proc_cpu_s(pid) - cpu0[pid] for pid in workers}
    served = max(used, key=lambda pid: used[pid]) if used else 0
    hwm = status_kib(served, "VmHWM") / 1024 if reset_ok and served else 0.0
    others = {pid: mib for pid, mib in sampler.max_mib.items() if pid != served}
    return ExportFigures(events, seconds, size, served, idle.get(served, 0.0), sampler.max_mib.get(served, 0.0),
                         hwm, others, window.line(), sampler.samples)


def explain(backend: Backend, url: str, params: dict[str, str]) -> str:
    """The SQL the backend runs for one list request, timed in-process, and its plan."""
    from plugins.audit import open_audit_log
    from plugins.audit.store import EventFilter
    from plugins.audit.text import words
    from datetime import datetime

    def us(text: str | None) -> int | None:
        if text is None:
            return None
        from core.times import to_us
        return to_us(datetime.fromisoformat(text if "T" in text else text + "T00:00:00+00:00"))

    flt = EventFilter(actor_id=params.get("actor_id"), action=params.get("action"),
                      outcome=params.get("outcome"), from_us=us(params.get("from")), to_us=us(params.get("to")),
                      words=tuple(words(params.get("q", ""))))
    limit = int(params.get("limit", "100")) + 1
    log = open_audit_log(SinkSettings(url=url))
    try:
        where = log._where(flt)  # noqa: SLF001 - the benchmark looks at what the backend runs
        statements = [("the statement", *log._page_sql(flt, where, limit))]  # noqa: SLF001
    finally:
        log.close()
    if backend.name == "mysql" and flt.words:
        # MysqlAuditLog.page runs a bounded scan first and the index statement only when the
        # scan stops short (plugins/audit/mysql.py): show both, as far as the module has them.
        from plugins.audit import mysql as audit_mysql
        scan = getattr(audit_mysql, "_scan", None)
        if scan is not None:
            statements = [("1. the scan (runs first)", *scan(flt.words, where, limit, "DESC")),
                          ("2. the index (runs when the scan stops short)", *statements[0][1:])]
    lines = []
    for label, sql, sql_args in statements:
        lines += [f"    {label}: {sql}", f"      args: {sql_args}"]
        lines += _explain_one(backend, url, sql, sql_args)
    return "\n".join(lines)


def _explain_one(backend: Backend, url: str, sql: str, sql_args: list[Any]) -> list[str]:
    if backend.name == "sqlite":
        from plugins.audit.sqlite import register_functions
        conn = sqlite3.connect(url[len("sqlite:///"):])
        try:
            register_functions(conn)
            q = sql.replace("%s", "?")
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                rows = conn.execute(q, sql_args).fetchall()
                times.append((time.perf_counter() - t0) * 1000)
            plan = conn.execute("EXPLAIN QUERY PLAN " + q, sql_args).fetchall()
        finally:
            conn.close()
        return ([f"      in-process: {len(rows)} rows in {' / '.join(f'{t:.1f}' for t in times)} ms (3 runs);"
                 f" EXPLAIN QUERY PLAN:"] + [f"        {row[-1]}" for row in plan])
    with contextlib.closing(mysql_connect(backend.args.mysql, urlsplit(url).path.strip("/"))) as conn, \
            conn.cursor() as cur:
        runs: list[float] = []
        warnings, error, rows = 0, "", []
        for _ in range(3):
            t0 = time.perf_counter()
            try:
                cur.execute(sql, sql_args)
                rows = list(cur.fetchall())
                warnings = cur.warning_count
            except pymysql.err.MySQLError as exc:
                rows, warnings, error = [], -1, str(exc)
            runs.append((time.perf_counter() - t0) * 1000)
        stopped = (f", stopped by ROWS EXAMINED ({warnings} warning)" if warnings > 0 else
                   f", failed: {error}" if warnings < 0 else "")
        cur.execute("EXPLAIN " + sql, sql_args)
        names = [d[0] for d in cur.description]
        plan = cur.fetchall()
    return ([f"      in-process: {len(rows)} rows in {' / '.join(f'{t:.1f}' for t in runs)} ms (3 runs, one new"
             f" connection){stopped}; EXPLAIN:"]
            + ["        " + ", ".join(f"{k}={v}" for k, v in zip(names, row) if v is not None) for row in plan])


def reads_phase(args: argparse.Namespace, backend: Backend, url: str, fill: FillFigures) -> ReadFigures:
    figures = ReadFigures()
    service = start_service(backend, "reads", url)
    try:
        assert service.proc is not None
        groups = backend.groups(service)
        base = f"http://{HOST}:{service.query_port}"
        lists = filtered_queries(fill, args.requests, seed=21)
        searches = {word: [{"q": word, "limit": "100"}] * args.requests for _, word in ALL_WORDS}
        with httpx.Client(base_url=base, timeout=120) as http:
            # Warm-up: a few of each kind (the page cache, the read threads' connections)
            for params in filtered_queries(fill, 20, seed=5) + [{"q": w} for _, w in ALL_WORDS for _ in range(5)]:
                http.get(LIST_PATH, params=params)
            check_answers(http, fill, lists[:50], figures.problems)
            quiet(args, f"{backend.name}: filtered lists", tree(service))
            figures.lists = timed_requests(http, "filtered list", lists, groups)
            show_timed(figures.lists)
            for label, word in ALL_WORDS:
                quiet(args, f"{backend.name}: search q={word}", tree(service))
                figures.searches[word] = timed_requests(http, f"q={word} ({label})", searches[word], groups)
                show_timed(figures.searches[word])
            for _, word in ALL_WORDS:
                walk_search(http, fill, word, figures.problems)
        quiet(args, f"{backend.name}: export of every event as NDJSON", tree(service))
        figures.export = export_all(service.query_port, groups)
        show_export(figures.export)
        if not args.no_verify:
            quiet(args, f"{backend.name}: verify", tree(service))
            t0 = time.perf_counter()
            r = httpx.get(f"{base}{VERIFY_PATH}", timeout=3600)
            figures.verify = {"seconds": time.perf_counter() - t0, "status": r.status_code,
                              "answer": r.json() if r.status_code == 200 else r.text[:300]}
            print(f"  verify: {figures.verify['answer']} in {figures.verify['seconds']:.1f} s", flush=True)
    finally:
        backend.cleanup.stop(service)
    # Plans of the slowest request of each kind (service stopped: nothing else on the database).
    for timed in [figures.lists, *figures.searches.values()]:
        if timed is None:
            continue
        try:
            text = explain(backend, url, timed.slowest)
        except Exception as exc:  # noqa: BLE001 - a diagnostic, not a figure
            text = f"    (could not explain: {exc!r})"
        head = (f"  slowest {timed.label}: {timed.latencies_ms[-1]:.1f} ms, "
                f"{urlencode(timed.slowest, safe=':')}")
        figures.explains.append(head + "\n" + text)
        print(figures.explains[-1], flush=True)
    return figures


def _day_text(params: dict[str, str], name: str) -> str:
    return params[name] + "T00:00:00"  # the window's bounds are dates (UTC midnight)


def check_answers(http: httpx.Client, fill: FillFigures, queries: list[dict[str, str]], problems: list[str]) -> None:
    """Filtered lists: every item fits the filter, newest first."""
    found = 0
    for params in queries:
        items = http.get(LIST_PATH, params=params).json()["items"]
        found += len(items)
        low, high = _day_text(params, "from"), _day_text(params, "to")
        for item in items:
            if (item["actor_id"], item["action"], item["outcome"]) != (params["actor_id"], params["action"], "failure") \
                    or not low <= item["occurred_at"][:19] < high:
                problems.append(f"filtered list {params}: item {item['event_id']} does not fit it: "
                                f"{item['actor_id']} {item['action']} {item['outcome']} {item['occurred_at']}")
                break
        times = [i["occurred_at"] for i in items]
        if times != sorted(times, reverse=True):
            problems.append(f"filtered list {params}: items are not newest first")
        if not items:
            problems.append(f"filtered list {params}: no item, though a stored failure fits it")
    print(f"  check: {len(queries)} filtered lists, {found} items, each fits its filter, newest first"
          + ("" if not problems else f" - {len(problems)} PROBLEMS"), flush=True)


def walk_search(http: httpx.Client, fill: FillFigures, word: str, problems: list[str]) -> None:
    """Every page of q=word (limit 1000, by cursor): each item holds the word, newest first, no repeats,
    and as many as the fill stored."""
    before = len(problems)
    seen: set[str] = set()
    last = None
    cursor = None
    pages = 0
    t0 = time.perf_counter()
    folded = word.casefold()
    while True:
        params = {"q": word, "limit": "1000", **({"cursor": cursor} if cursor else {})}
        r = http.get(LIST_PATH, params=params)
        if r.status_code != 200:
            problems.append(f"q={word} page {pages + 1}: {r.status_code} {r.text[:200]}")
            break
        page = r.json()
        pages += 1
        for item in page["items"]:
            if item["event_id"] in seen:
                problems.append(f"q={word}: event {item['event_id']} answered twice")
            seen.add(item["event_id"])
            details = item["details"] or {}
            text = "\n".join([item["message"] or "", *(v for v in details.values() if isinstance(v, str))])
            if folded not in text.casefold():
                problems.append(f"q={word}: event {item['event_id']} does not hold the word: {item['message']!r}")
            if last is not None and item["occurred_at"] > last:
                problems.append(f"q={word}: not newest first at {item['event_id']}")
            last = item["occurred_at"]
        cursor = page["next_cursor"]
        if not cursor or len(problems) - before > 5:
            break
    expected = fill.word_hits.get(word)
    if expected is not None and len(seen) != expected:
        problems.append(f"q={word}: {len(seen):,} events found by walking every page, {expected:,} stored hold it")
    print(f"  check: q={word}: {pages} pages of 1000 walked by cursor in {time.perf_counter() - t0:.1f} s, "
          f"{len(seen):,} events (the fill stored {expected:,} holding the word)"
          + ("" if len(problems) == before else f" - PROBLEMS: {problems[before:before + 3]}"), flush=True)


def show_timed(t: Timed) -> None:
    bad = f", NOT 200: {t.statuses}" if t.bad else ""
    items = sorted(t.items)
    print(f"  {t.label}: {len(t.latencies_ms)} requests one at a time: p50 {pct(t.latencies_ms, .5):.1f} ms, "
          f"p95 {pct(t.latencies_ms, .95):.1f} ms, p99 {pct(t.latencies_ms, .99):.1f} ms, "
          f"max {t.latencies_ms[-1]:.1f} ms; items per page: median {statistics.median(items):g} "
          f"(min {items[0]}, max {items[-1]}){bad}\n    CPU: {t.cpu}", flush=True)


def show_export(e: ExportFigures) -> None:
    hwm = f"{e.hwm_mib:.0f}" if e.hwm_mib else "n/a"
    others = ", ".join(f"pid {p}: {m:.0f}" for p, m in e.others_max_mib.items()) or "-"
    print(f"  export: {e.events:,} events, {e.bytes / 1024 / 1024:,.0f} MiB in {e.seconds:.1f} s = "
          f"{e.rate:,.0f} events/s ({e.bytes / 1024 / 1024 / e.seconds:.1f} MiB/s)\n"
          f"    query worker that served it (pid {e.worker_pid}): RSS idle {e.rss_idle_mib:.0f} MiB, max sampled "
          f"{e.rss_max_mib:.0f} MiB ({e.samples} samples), VmHWM {hwm} MiB; other query workers max {others} MiB"
          f"\n    CPU: {e.cpu}", flush=True)


# -- report ---------------------------------------------------------------------------------


@dataclass
class BackendFigures:
    name: str
    describe: str
    ingest: IngestFigures | None = None
    ingest_nolag: IngestFigures | None = None
    fill: FillFigures | None = None
    reads: ReadFigures | None = None
    error: str | None = None


def run_backend(args: argparse.Namespace, backend: Backend) -> BackendFigures:
    out = BackendFigures(backend.name, "")
    try:
        out.describe = backend.describe()
        announce(f"backend {backend.name}: {out.describe}")
        if "ingest" in args.phases:
            out.ingest = ingest_phase(args, backend)
            if args.lag_off:
                out.ingest_nolag = ingest_phase(args, backend, lag_off=True)
        if "fill" in args.phases:
            url = backend.url("reads")
            quiet(args, f"{backend.name}: fill with {args.events:,} events", [])
            out.fill = fill_phase(args, backend, url)
            f = out.fill
            print(f"  fill: {f.events:,} events in {f.write_s:.1f} s of Sink.write = {f.rate:,.0f} events/s "
                  f"(generation {f.gen_s:.1f} s apart; wall {f.wall_s:.1f} s); store {f.store}\n"
                  f"  words' share of the events: "
                  + ", ".join(f"{w} {s:.1%}" for w, s in f.word_share.items())
                  + f"\n  housekeeping reads (every 30 s in each query worker): count() {f.count_s * 1000:.0f} ms, "
                  f"index_bytes() {f.index_bytes_s * 1000:.0f} ms ({f.index_bytes / 1024 / 1024:,.0f} MiB)",
                  flush=True)
            if "reads" in args.phases:
                out.reads = reads_phase(args, backend, url, out.fill)
    except Exception as exc:  # noqa: BLE001 - the other backend still runs; the error is reported
        import traceback
        traceback.print_exc()
        out.error = f"{type(exc).__name__}: {exc}"
        print(f"backend {backend.name} FAILED: {out.error}", flush=True)
    return out


def report(args: argparse.Namespace, results: list[BackendFigures]) -> int:
    names = [r.name for r in results]
    width = 34
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, values: list[str]) -> None:
        rows.append((label, values))

    def each(fn: Any) -> list[str]:
        out = []
        for r in results:
            try:
                out.append(fn(r))
            except Exception:  # noqa: BLE001 - a phase that did not run
                out.append("-")
        return out

    def ms2(t: Timed | None) -> str:
        assert t is not None
        return f"{pct(t.latencies_ms, .5):.1f} / {pct(t.latencies_ms, .95):.1f}"

    add("ingest body bytes (events / tasks)", each(
        lambda r: f"{statistics.mean(r.ingest.event_bytes):,.0f} / {statistics.mean(r.ingest.task_bytes):,.0f}"))
    add("items per body (events / tasks)", each(
        lambda r: f"{EVENTS_PER_REQUEST} / {statistics.mean(r.ingest.tasks_per_request):.1f}"))
    add("ingest events/s (202)", each(lambda r: " ".join(
        f"{x.rows_per_s:,.0f}" for x in r.ingest.results if x.kind == "events") + f" (mean {r.ingest.rate('events'):,.0f})"))
    add("ingest task rows/s (202)", each(lambda r: " ".join(
        f"{x.rows_per_s:,.0f}" for x in r.ingest.results if x.kind == "tasks") + f" (mean {r.ingest.rate('tasks'):,.0f})"))
    add("ack p50 / p99 ms, events", each(lambda r: f"{pct(r.ingest.latencies('events'), .5):.1f} / "
                                                  f"{pct(r.ingest.latencies('events'), .99):.1f}"))
    add("ack p50 / p99 ms, tasks", each(lambda r: f"{pct(r.ingest.latencies('tasks'), .5):.1f} / "
                                                 f"{pct(r.ingest.latencies('tasks'), .99):.1f}"))
    add("flusher rows/s (events / tasks)", each(
        lambda r: f"{statistics.mean(x.drain_rate for x in r.ingest.results if x.kind == 'events'):,.0f} / "
                  f"{statistics.mean(x.drain_rate for x in r.ingest.results if x.kind == 'tasks'):,.0f}"))
    add("non-202 answers (events / tasks)", each(lambda r: f"{sum(x.refused for x in r.ingest.results if x.kind == 'events')}"
                                                          f" / {sum(x.refused for x in r.ingest.results if x.kind == 'tasks')}"))
    add("max_lag off: events/s vs task rows/s", each(
        lambda r: f"{r.ingest_nolag.rate('events'):,.0f} vs {r.ingest_nolag.rate('tasks'):,.0f}"))
    add("max_lag off: ack p99 ms (ev / tk)", each(
        lambda r: f"{pct(r.ingest_nolag.latencies('events'), .99):.1f} / "
                  f"{pct(r.ingest_nolag.latencies('tasks'), .99):.1f}"))
    add("fill events/s (Sink.write)", each(lambda r: f"{r.fill.rate:,.0f}"))
    add("store size", each(lambda r: r.fill.store.split(":")[0].split(" (")[0]))
    add("filtered list p50 / p95 ms", each(lambda r: ms2(r.reads.lists)))
    for label, word in ALL_WORDS:
        add(f"q={word} p50 / p95 ms" + (" (extra)" if (label, word) in EXTRA_WORDS else ""),
            each(lambda r, w=word: ms2(r.reads.searches[w])))
        add(f"  share of events, first page", each(
            lambda r, w=word: f"{r.fill.word_share[w]:.1%}, {statistics.median(r.reads.searches[w].items):g} items"))
    add("export events/s", each(lambda r: f"{r.reads.export.rate:,.0f}"))
    add("export peak RSS, query worker MiB", each(
        lambda r: f"{r.reads.export.peak_mib:.0f} (idle {r.reads.export.rss_idle_mib:.0f})"))
    add("verify s", each(lambda r: f"{r.reads.verify['seconds']:.1f}"))
    print(f"\nsummary ({args.events:,} events in the store; {args.requests} requests per read kind, one at a time; "
          f"ingest {args.rounds} x {args.seconds:g} s per kind, {args.connections} connections)")
    print(f"{'':<{width}}" + "".join(f"{n:>28}" for n in names))
    for label, values in rows:
        print(f"{label:<{width}}" + "".join(f"{v:>28}" for v in values))

    print("\ngoals")
    failed = 0
    for r in results:
        checks: list[tuple[str, bool | None, str]] = []
        if r.error:
            checks.append(("backend ran", False, r.error))
        if r.ingest:
            ev, tk = r.ingest.rate("events"), r.ingest.rate("tasks")
            checks.append((f"ingest events/s >= task rows/s (bodies of {statistics.mean(r.ingest.event_bytes):,.0f} B)",
                           ev >= tk, f"{ev:,.0f} vs {tk:,.0f} ({ev / tk:.2f}x)"))
        if r.ingest_nolag:
            ev, tk = r.ingest_nolag.rate("events"), r.ingest_nolag.rate("tasks")
            checks.append(("(not a goal) the same with spool.max_lag = 0: events/s vs task rows/s", None,
                           f"{ev:,.0f} vs {tk:,.0f} ({ev / tk:.2f}x)"))
        if r.reads and r.reads.lists:
            t = r.reads.lists
            checks.append((f"filtered list p95 < {LIST_P95_GOAL_MS:g} ms", pct(t.latencies_ms, .95) < LIST_P95_GOAL_MS
                           and not t.bad, f"{pct(t.latencies_ms, .95):.1f} ms (p50 {pct(t.latencies_ms, .5):.1f})"))
        if r.reads:
            for label, word in WORDS:
                s = r.reads.searches.get(word)
                if s is None:
                    continue
                checks.append((f"search p95 < {SEARCH_P95_GOAL_MS:g} ms, q={word} ({label})",
                               pct(s.latencies_ms, .95) < SEARCH_P95_GOAL_MS and not s.bad,
                               f"{pct(s.latencies_ms, .95):.1f} ms (p50 {pct(s.latencies_ms, .5):.1f})"))
            for label, word in EXTRA_WORDS:
                s = r.reads.searches.get(word)
                if s is None:
                    continue
                share = f"{r.fill.word_share[word]:.2%} of events, " if r.fill else ""
                checks.append((f"(not a goal) search q={word} ({label}, {share}"
                               f"p95 {'<' if pct(s.latencies_ms, .95) < SEARCH_P95_GOAL_MS else '>='} "
                               f"{SEARCH_P95_GOAL_MS:g} ms)", None,
                               f"{pct(s.latencies_ms, .95):.1f} ms (p50 {pct(s.latencies_ms, .5):.1f})"))
            e = r.reads.export
            if e is not None:
                complete_export = r.fill is not None and e.events == r.fill.events
                checks.append((f"export >= {EXPORT_RATE_GOAL:,.0f} events/s", e.rate >= EXPORT_RATE_GOAL
                               and complete_export, f"{e.rate:,.0f} events/s ({e.events:,} events"
                               f"{'' if complete_export else ' - NOT the number stored'})"))
                checks.append((f"query worker RSS during the export < {RSS_GOAL_MIB:g} MiB", e.peak_mib < RSS_GOAL_MIB,
                               f"{e.peak_mib:.0f} MiB (sampled max {e.rss_max_mib:.0f}, VmHWM "
                               f"{e.hwm_mib:.0f}, idle {e.rss_idle_mib:.0f})"))
        if r.reads:
            for problem in r.reads.problems[:10]:
                print(f"  [WARN] {r.name}: wrong answer: {problem}")
        for label, ok, value in checks:
            failed += ok is False
            verdict = "info" if ok is None else "PASS" if ok else "FAIL"
            print(f"  [{verdict}] {r.name}: {label}: {value}")
    return 1 if failed else 0


def to_json(results: list[BackendFigures]) -> Any:
    def plain(obj: Any) -> Any:
        if isinstance(obj, list) and obj and isinstance(obj[0], float) and len(obj) > 50:
            return {"n": len(obj), "p50": pct(sorted(obj), .5), "p95": pct(sorted(obj), .95),
                    "p99": pct(sorted(obj), .99), "max": max(obj)}
        if hasattr(obj, "__dataclass_fields__"):
            return {k: plain(getattr(obj, k)) for k in obj.__dataclass_fields__ if k != "failures"}
        if isinstance(obj, dict):
            return {str(k): plain(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [plain(v) for v in obj]
        return obj
    return plain(results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    cleanup = Cleanup(Path(tempfile.mkdtemp(prefix="bench_audit_")), args.keep)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, on_term)
    results: list[BackendFigures] = []
    run_tag = secrets.token_hex(4)
    try:
        announce(f"start: sinks {args.sink}, {args.events:,} events, run tag {run_tag}")
        for name in (("sqlite", "mysql") if args.sink == "both" else (args.sink,)):
            results.append(run_backend(args, Backend(name, args, cleanup, run_tag)))
        code = report(args, results)
        if args.json:
            args.json.write_text(stdjson.dumps(to_json(results), indent=1, ensure_ascii=False))
    finally:
        cleanup.close()
        signal.signal(signal.SIGTERM, previous)
    print(f"\nrun took {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
