"""Sustained end-to-end benchmark (issue 13): how many task keys per second
reach MariaDB, with everything acknowledged in the database at the end,
against a naive write-through service and against LOAD DATA.

    cd /work/main && .venv/bin/python -m loadtests.bench_sustained                  # ~12 min (--duration 120)
    cd /work/main && .venv/bin/python -m loadtests.bench_sustained --quick          # ~2 min smoke run
    .venv/bin/python -m loadtests.bench_sustained --buffer-pool 1G                  # the tuned variant
    .venv/bin/python -m loadtests.bench_sustained --env PS_FLUSH_WRITERS=1 --phases service,open

One process, one private MariaDB (testkit/mariadb.py; its settings are
printed), a fresh database per phase. The load (loadtests/loadgen.py): 2
client processes x 8 keep-alive connections posting realistic 100-task
batches (loadtests/bodies.py); 30% of the requests re-send the tasks of an
earlier acknowledged request of the same connection with new content
(updates). After a 429 a client waits the Retry-After, as the client library
does. Every 202 is remembered (request number, content variant), which is
enough to rebuild each acknowledged body.

Phases (--phases picks a subset; loaddata, and open without --open-rate, need service):
  service   the service (`core.cli run`, config of loadtests/bench_service.py
            with spool.max_bytes at its production default, plus --env),
            closed loop for --duration s, then POST /flush until everything
            is in MariaDB. Sustained rate = distinct task keys in the
            database / (load + drain). While it runs the spool's own state is
            sampled: the lag the service estimates (records waiting / drain
            rate, what /health shows and spool.max_lag limits) and the age
            of the oldest record not yet flushed. Statements per 1000 rows
            from MariaDB's global status. 0 lost: every acknowledged key
            holds the content of its last acknowledged send.
  naive     loadtests/naive_app.py (granian, 2 workers, one upsert + COMMIT
            per request before the 202), the same load and duration; its
            rate = keys in the database / load time (nothing to drain).
  loaddata  the service phase's acknowledged requests, rebuilt from the
            load generator's record in acknowledgement order (the spool
            itself is trimmed as it drains, so no copy of it holds them
            all), loaded single-stream by loadtests/direct_load.py
            load_data_infile (LOAD DATA + INSERT..SELECT..ON DUPLICATE KEY
            per 1000-record batch, decoding and row building included).
  open      the service again, open loop at 80% of the service phase's
            end-to-end rows/s (or at --open-rate rows/s) for
            min(60, --duration) s; latency counted from each request's
            scheduled send time.

Time: about 2 x duration + min(60, duration) of load, plus drains, the
LOAD DATA load and the checks (~12 min at the default 120 s; --quick
(10 s phases) ~2 min). Everything started is killed and the temporary
folder removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import pymysql  # noqa: E402
from msgspec import Struct  # noqa: E402

from core.records import KIND_SESSIONS, KIND_TASKS  # noqa: E402
from core.settings import Settings, SinkSettings, load_settings  # noqa: E402
from core.times import now_us  # noqa: E402
from loadtests.bench_report import LoadResult, fmt, machine_lines, phase_details  # noqa: E402
from loadtests.bench_service import HOST, Reaper, ServiceProc, SpoolWatch, free_port  # noqa: E402
from loadtests.bench_write import Bench, _wait_http, bench_main, summarize  # noqa: E402
from loadtests.bodies import TASKS_PER_REQUEST, sessions_body, split_template, stamp  # noqa: E402
from loadtests.dbstatus import Statements, statements  # noqa: E402
from loadtests.direct_load import Entry, load_data_infile  # noqa: E402
from loadtests.loadgen import ClientPlan, ClientResult, variant_templates  # noqa: E402
from loadtests.naive_app import URL_ENV  # noqa: E402
from loadtests.procstat import CpuWindow, roles_of, wait_quiet  # noqa: E402
from plugins.mysql import MysqlSink  # noqa: E402
from testkit.mariadb import PrivateMariaDB  # noqa: E402

logger = logging.getLogger("bench")
PHASES = ("service", "naive", "loaddata", "open")
TASKS_TABLE = "translation_tasks"

TARGET_VS_NAIVE = 2.0
TARGET_VS_LOAD_DATA = 1.0
TARGET_P99_MS = 10.0
TARGET_OPEN_SHARE = 0.8
TARGET_STATEMENTS_PER_1000 = 2.0
OPEN_MAX_S = 60.0


# -- results ---------------------------------------------------------------------

class KeyCheck(Struct):
    """Every acknowledged task key against what the database holds."""
    acked_keys: int
    ok: int  # holds the content of its last acknowledged send
    missing: int  # acknowledged, not in the database
    stale: int  # in the database with other content than its last acknowledged send
    unsure_keys: int  # some send of the key got no clear answer: that content counts as right too
    unacked_rows: int  # rows of keys never acknowledged (an answer lost with its connection)
    seconds: float

    @property
    def lost(self) -> int:
        return self.missing + self.stale


class Backlog(Struct):
    """The spool during a service phase, as the service sees it."""
    samples: int = 0
    max_lag_s: float = 0.0  # records waiting / drain rate last measured (/health's estimated_lag_seconds)
    max_lag_at_s: float = 0.0  # when, in seconds from the watch's start
    rate_at_max: float = 0.0  # the drain rate it was computed with
    max_waiting: int = 0
    max_oldest_s: float = 0.0  # age of the oldest record not yet in the database
    last_rate: float = 0.0


class Phase(Struct):
    load: LoadResult
    keys: int = 0  # distinct task keys in the database at the end
    seconds: float = float("nan")  # load start until everything acknowledged was in the database
    drain_s: float = float("nan")  # of which after the load window
    backlog: Backlog | None = None
    check: KeyCheck | None = None
    stmts: Statements | None = None  # the whole phase, the naive phase included
    settings: str = ""

    @property
    def keys_s(self) -> float:
        return self.keys / self.seconds if self.seconds else float("nan")

    @property
    def rows(self) -> int:
        """Task rows acknowledged (updates included) + sessions."""
        return self.load.rows_accepted_total + self.load.sessions_posted

    @property
    def rows_s(self) -> float:
        return self.rows / self.seconds if self.seconds else float("nan")


class DirectRun(Struct):
    rows: int  # rows written (updates included; several writes of a key in one batch count once)
    keys: int
    seconds: float
    stmts: Statements
    cpu: str
    check: KeyCheck | None = None

    @property
    def keys_s(self) -> float:
        return self.keys / self.seconds

    @property
    def rows_s(self) -> float:
        return self.rows / self.seconds


# -- what was acknowledged ----------------------------------------------------------

class Ledger:
    """The load generator's record of one phase: per (tag, request number)
    the content variant of its last 202, in acknowledgement order."""

    def __init__(self, clients: list[ClientResult], plans: list[ClientPlan]) -> None:
        self.plans = {p.tag: p for p in plans}
        acks = [(c.acked[i], c.tag, c.acked[i + 1], c.acked[i + 2])
                for c in clients for i in range(0, len(c.acked), 3)]
        acks.sort()  # one connection's sends of a key are sequential: the later answer is the later version
        self.acks: list[tuple[int, str, int, int]] = acks  # (answer time us, tag, number, variant)
        self.last = {(tag, number): variant for _, tag, number, variant in acks}
        self.unsure: dict[tuple[str, int], set[int]] = {}
        for c in clients:
            for i in range(0, len(c.unsure), 2):
                self.unsure.setdefault((c.tag, c.unsure[i]), set()).add(c.unsure[i + 1])
        self._templates: dict[str, list[list[bytes]]] = {}

    def templates(self, tag: str) -> list[list[bytes]]:
        """templates[variant][k] as JSON bodies, rebuilt exactly as the client built them."""
        if tag not in self._templates:
            plan = self.plans[tag]
            self._templates[tag] = variant_templates(tag, plan.sessions, plan.update_share)
        return self._templates[tag]

    def target_texts(self) -> dict[str, list[list[list[str | None]]]]:
        """texts[tag][variant][k][i]: target_text of task i of template k in that variant."""
        return {tag: [[[t["target_text"] for t in msgspec.json.decode(body)["tasks"]] for body in variant]
                      for variant in self.templates(tag)] for tag in self.plans}

    def entries(self) -> Iterator[Entry]:
        """Spool entries of every acknowledged request in acknowledgement
        order (sessions first), received_at on the wall clock as ingest stamps it."""
        to_wall = now_us() - int(time.monotonic() * 1e6)
        first = (self.acks[0][0] if self.acks else int(time.monotonic() * 1e6)) + to_wall
        seq = 0
        for seq, (tag, plan) in enumerate(self.plans.items(), 1):
            yield seq, KIND_SESSIONS, first - 1000 + seq, plan.sessions, sessions_body(tag, plan.sessions)
        parts = {tag: [[split_template(t) for t in v] for v in self.templates(tag)] for tag in self.plans}
        for seq, (t, tag, number, variant) in enumerate(self.acks, seq + 1):
            body = stamp(parts[tag][variant][number % len(parts[tag][0])], number)
            yield seq, KIND_TASKS, t + to_wall, TASKS_PER_REQUEST, body


def check_keys(conn: pymysql.connections.Connection, database: str, ledger: Ledger) -> KeyCheck:
    """Scan the task table once: each row's task_id names (tag, request number,
    task index), so the expected target_text is known without storing it per key."""
    started = time.monotonic()
    texts = ledger.target_texts()
    ok: Counter[tuple[str, int]] = Counter()
    stale = unacked = 0
    cur = conn.cursor(pymysql.cursors.SSCursor)
    try:
        cur.execute(f"SELECT task_id, target_text FROM `{database}`.`{TASKS_TABLE}`")
        for task_id, text in cur:
            tag, number_text, index_text = task_id.split("-")
            key = (tag, int(number_text))
            variant = ledger.last.get(key)
            if variant is None:
                unacked += 1
                continue
            by_variant = texts[tag]
            k, i = key[1] % len(by_variant[0]), int(index_text)
            allowed = {variant, *ledger.unsure.get(key, ())}
            if any(by_variant[v][k][i] == text for v in allowed):
                ok[key] += 1
            else:
                stale += 1
    finally:
        cur.close()
    acked_keys = TASKS_PER_REQUEST * len(ledger.last)
    found = sum(ok.values())
    return KeyCheck(acked_keys, found, acked_keys - found - stale, stale,
                    TASKS_PER_REQUEST * sum(1 for key in ledger.unsure if key in ledger.last), unacked,
                    time.monotonic() - started)


# -- the spool's backlog, sampled from outside ---------------------------------------

class BacklogWatch:
    """Reads the spool's state (read-only) every `interval` s: records waiting
    and the drain rate the flusher publishes, i.e. the figures /health's
    buffer.estimated_lag_seconds and ingest's spool.max_lag check use
    (wal/types.py estimated_lag_s), and the oldest record not yet flushed.
    Read from the file rather than /health so that sampling does not queue
    behind the load's requests."""

    STATE = "SELECT live_sessions + live_tasks + live_events, drain_rate, flushed_seq FROM state"
    OLDEST = "SELECT received_at_us FROM entries WHERE seq > ? ORDER BY seq LIMIT 1"

    def __init__(self, path: Path, interval: float = 0.25) -> None:
        self.path = path
        self.interval = interval
        self.backlog = Backlog()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = 0.0

    def start(self) -> BacklogWatch:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> Backlog:
        self._stop.set()
        self._thread.join(5)
        return self.backlog

    def _sample(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN")  # one snapshot for both reads
        try:
            waiting, rate, flushed = conn.execute(self.STATE).fetchone()
            oldest = conn.execute(self.OLDEST, (flushed,)).fetchone()
        finally:
            conn.execute("COMMIT")
        b = self.backlog
        b.samples += 1
        b.max_waiting = max(b.max_waiting, waiting)
        b.last_rate = rate
        if rate and waiting / rate > b.max_lag_s:
            b.max_lag_s, b.max_lag_at_s, b.rate_at_max = waiting / rate, time.monotonic() - self._started, rate
        if oldest:
            b.max_oldest_s = max(b.max_oldest_s, (now_us() - oldest[0]) / 1e6)

    def _run(self) -> None:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5, isolation_level=None)
        try:
            while not self._stop.is_set():
                try:
                    self._sample(conn)
                except sqlite3.Error as exc:  # a busy spool: this sample is skipped, not the watch
                    logger.debug("sampling the spool failed: %s", exc)
                self._stop.wait(self.interval)
        finally:
            conn.close()


# -- the phases ------------------------------------------------------------------------

class SustainedBench(Bench):
    def __init__(self, args: argparse.Namespace, reaper: Reaper, folder: Path) -> None:
        super().__init__(args, reaper, folder)
        self.mariadb = PrivateMariaDB(folder / "mariadb", options={"innodb_buffer_pool_size": args.buffer_pool})
        # The production spool cap (bench_service's CONFIG sets 64 GiB): a full spool must show as 503s.
        self.env = {"PS_SPOOL_MAX_BYTES": str(Settings().spool.max_bytes), **args.env}
        self.ledger: Ledger | None = None
        self.settings: Settings | None = None  # the service's, as its config file and environment make them

    def plans(self, port: int, phase: str, duration: float, rate_rows_s: float = 0.0,
              max_requests: int = 0) -> list[ClientPlan]:
        return [msgspec.structs.replace(p, update_share=self.args.updates, retry_after=True, track=True)
                for p in super().plans(port, phase, duration, rate_rows_s, max_requests)]

    def load(self, port: int, leader: int, result: LoadResult, rate_rows_s: float = 0.0,
             label: str = "ingest") -> tuple[list[ClientResult], list[ClientPlan], float]:
        """label: what the CPU figures call the granian processes."""
        plans = self.plans(port, result.name, result.duration, rate_rows_s)
        mode = f"open loop, {rate_rows_s:,.0f} rows/s scheduled" if rate_rows_s else "closed loop"
        logger.info("%s: load for %.0f s (%d processes x %d connections, %s, %.0f%% updates)", result.name,
                    result.duration, len(plans), plans[0].connections, mode, 100 * self.args.updates)
        groups = {role.replace("ingest", label): pids for role, pids in roles_of(leader).items()}
        clients, window, start = self.drive(plans, groups)
        summarize(result, clients)
        result.sessions_posted = sum(p.sessions for p in plans)
        result.cpu = window.line()
        return clients, plans, start

    def sustained_phase(self, name: str, label: str, duration: float, rate_rows_s: float = 0.0) -> Phase:
        database = f"sustained_{name}"
        self.monitor.drop(database)
        svc = ServiceProc(self.reaper, self.folder / name, self.mariadb.url(database), "full", self.args.workers,
                          env=self.env)
        self.settings = load_settings(svc.config, environ={**os.environ, **self.env})
        phase = Phase(LoadResult(name, label, duration, target_rate_rows_s=rate_rows_s),
                      settings=describe_settings(self.settings))
        logger.info("%s: %s: starting the service (%s)", name, label, phase.settings)
        try:
            svc.start("run")
            svc.wait_ready(need_database=True)
            time.sleep(1.0)  # the flusher's start-up (migrate, first heartbeat) is behind
            phase.load.background = wait_quiet(self.args.wait_quiet, self.our_pids(svc.pid))
            before = self.monitor.status()
            backlog, watch = BacklogWatch(svc.spool).start(), SpoolWatch(svc.spool).start()
            clients, plans, start = self.load(svc.ingest_port, svc.pid, phase.load, rate_rows_s)
            self._flush(svc, phase.load, watch, start)
            phase.backlog = backlog.stop()
            phase.stmts = phase.load.stmts = statements(before, self.monitor.status(), phase.rows)
            self._measure(phase, database)
            ledger = Ledger(clients, plans)
            phase.check = self._check(name, database, ledger)
            if name == "service":
                self.ledger = ledger
        finally:
            svc.stop()
            self.monitor.drop(database)
            shutil.rmtree(svc.folder, ignore_errors=True)
        return phase

    def _measure(self, phase: Phase, database: str) -> None:
        load = phase.load
        phase.keys = load.db_tasks = self.monitor.count(database, TASKS_TABLE)
        if load.flushed:
            # _flush's drain_rows_s is rows / (flushed - load start): the exact elapsed time back
            phase.seconds = phase.rows / load.drain_rows_s
            phase.drain_s = phase.seconds - load.duration
        logger.info("%s: %s task keys in the database, %s s from load start: %s keys/s end to end", load.name,
                    f"{phase.keys:,}", fmt(phase.seconds, ".1f"), fmt(phase.keys_s))

    def _check(self, name: str, database: str, ledger: Ledger) -> KeyCheck:
        check = check_keys(self.monitor.conn, database, ledger)
        logger.info("%s: 0-lost check: %s acknowledged keys, %s right, %s missing, %s stale (%.1f s)", name,
                    f"{check.acked_keys:,}", f"{check.ok:,}", f"{check.missing:,}", f"{check.stale:,}",
                    check.seconds)
        return check

    def naive_phase(self, duration: float) -> Phase:
        database = "sustained_naive"
        self.monitor.drop(database)
        MysqlSink(SinkSettings(url=self.mariadb.url(database))).migrate()  # the naive app does not migrate
        folder = self.folder / "naive"
        folder.mkdir()
        port = free_port()
        phase = Phase(LoadResult("naive", "naive write-through (loadtests/naive_app.py)", duration),
                      settings=f"granian workers {self.args.workers}, one executemany upsert + COMMIT per request")
        logger.info("naive: starting loadtests/naive_app.py")
        proc = self.reaper.popen(
            [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--no-ws", "--loop", "uvloop",
             "--host", HOST, "--port", str(port), "--workers", str(self.args.workers), "--respawn-failed-workers",
             "--log-level", "warning", "loadtests.naive_app:create_app"],
            cwd=ROOT, log_file=folder / "naive.log", env={URL_ENV: self.mariadb.url(database)})
        try:
            _wait_http(port, proc.poll)
            phase.load.background = wait_quiet(self.args.wait_quiet, self.our_pids(proc.pid))
            before = self.monitor.status()
            self.load(port, proc.pid, phase.load, label="naive app")
            phase.stmts = statements(before, self.monitor.status(), phase.rows)
            phase.keys = phase.load.db_tasks = self.monitor.count(database, TASKS_TABLE)
            phase.seconds, phase.drain_s = duration, 0.0  # written before each answer: nothing to drain
            logger.info("naive: %s keys/s, p99 %.1f ms", fmt(phase.keys_s), phase.load.p99_ms)
        finally:
            self.reaper.kill_group(proc, term_timeout=10)
            self.monitor.drop(database)
        return phase

    def load_data_phase(self) -> DirectRun:
        assert self.ledger is not None
        database = "sustained_loaddata"
        self.monitor.drop(database)
        MysqlSink(SinkSettings(url=self.mariadb.url(database))).migrate()  # tables exist before the clock starts
        logger.info("loaddata: %s acknowledged requests of the service phase, LOAD DATA single stream",
                    f"{len(self.ledger.acks):,}")
        before = self.monitor.status()
        window = CpuWindow({"mariadbd": self.our_pids()})
        window.start()
        cpu0, t0 = time.process_time(), time.monotonic()
        rows = load_data_infile(self.mariadb, database, self.ledger.entries(), self.folder)
        seconds = time.monotonic() - t0
        window.stop({"benchmark process (bodies, decode, rows, SQL)": time.process_time() - cpu0})
        try:
            run = DirectRun(rows, self.monitor.count(database, TASKS_TABLE), seconds,
                            statements(before, self.monitor.status(), rows), window.line())
            logger.info("loaddata: %s keys/s (%s rows in %.1f s); CPU: %s", fmt(run.keys_s), f"{rows:,}", seconds,
                        run.cpu)
            run.check = self._check("loaddata", database, self.ledger)  # proves the rebuild is the same data
        finally:
            self.monitor.drop(database)
        return run


SERVER_VARIABLES = ("innodb_buffer_pool_size", "innodb_log_file_size", "innodb_flush_log_at_trx_commit",
                    "innodb_flush_method", "innodb_doublewrite", "innodb_io_capacity", "log_bin", "sync_binlog",
                    "max_allowed_packet")


def server_variables(conn: pymysql.connections.Connection) -> str:
    with conn.cursor() as cur:
        cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN %s", (SERVER_VARIABLES,))
        values = dict(cur.fetchall())
    return "server variables: " + ", ".join(f"{k}={values.get(k, '?')}" for k in SERVER_VARIABLES)


def describe_settings(s: Settings) -> str:
    return (f"spool.sync {s.spool.sync}, spool.max_lag {s.spool.max_lag:g} s, spool.max_bytes"
            f" {s.spool.max_bytes / 2**20:,.0f} MiB, flush.writers {s.flush.writers}, flush.batch_rows"
            f" {s.flush.batch_rows}, flush.max_delay {s.flush.max_delay:g} s, ingest.workers {s.ingest.workers}")


# -- report ---------------------------------------------------------------------------

class Figures(Struct):
    machine: list[str]
    mariadb: str
    server: str  # the variables that matter, as the server reports them
    load: str
    env: dict[str, str]
    phases: dict[str, Phase]
    loaddata: DirectRun | None = None
    targets: list[str] = []
    summary: dict[str, float] = {}  # the headline figures, for --json readers


def headline(f: Figures) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, p in f.phases.items():
        out |= {f"{name}_keys_s": p.keys_s, f"{name}_rows_s": p.rows_s, f"{name}_p50_ms": p.load.p50_ms,
                f"{name}_p99_ms": p.load.p99_ms, f"{name}_p999_ms": p.load.p999_ms}
        if p.stmts:
            out[f"{name}_statements_per_1000_rows"] = p.stmts.per_1000
        if p.check:
            out[f"{name}_lost"] = p.check.lost
        if p.backlog:
            out |= {f"{name}_max_estimated_lag_s": p.backlog.max_lag_s, f"{name}_drain_s": p.drain_s}
    if f.loaddata:
        out |= {"loaddata_keys_s": f.loaddata.keys_s, "loaddata_rows_s": f.loaddata.rows_s}
    return out


def _row(title: str, keys: int, rows: int, seconds: float, p: LoadResult | None, stmts: Statements | None) -> str:
    lat = (f"{fmt(p.p50_ms, '.1f'):>8}{fmt(p.p99_ms, '.1f'):>8}{fmt(p.p999_ms, '.1f'):>8}"
           f"  {','.join(f'{k}:{v}' for k, v in sorted(p.statuses.items())):<22}") if p else f"{'-':>8}" * 3 + " " * 24
    return (f"{title:<34}{keys:>11,}{rows:>11,}{fmt(seconds, '.1f'):>8}{fmt(keys / seconds if seconds else None):>9}"
            f"{fmt(rows / seconds if seconds else None):>9}{lat}{fmt(stmts.per_1000, '.2f') if stmts else '-':>8}")


def table(f: Figures) -> list[str]:
    head = (f"{'phase':<34}{'keys in DB':>11}{'rows':>11}{'s':>8}{'keys/s':>9}{'rows/s':>9}{'p50 ms':>8}"
            f"{'p99 ms':>8}{'p99.9':>8}  {'answers':<22}{'stmt/1k':>8}")
    titles = {"service": "service, closed loop (load+drain)", "naive": "naive write-through",
              "open": "service, open loop (load+drain)"}
    lines = [head]
    for name, p in f.phases.items():
        lines.append(_row(titles[name], p.keys, p.rows, p.seconds, p.load, p.stmts))
        if name == "service" and f.loaddata:
            d = f.loaddata
            lines.append(_row("LOAD DATA, same rows, 1 stream", d.keys, d.rows, d.seconds, None, d.stmts))
    return lines


def details(f: Figures) -> list[str]:
    lines: list[str] = []
    for p in f.phases.values():
        lines += phase_details(p.load) if p.load.stmts else phase_details(p.load)[:5]
        lines.append(f"    settings: {p.settings}")
        if p.load.stmts is None and p.stmts:
            lines.append(f"    MariaDB: {p.stmts.questions:,} statements for {p.stmts.rows:,} rows ="
                         f" {p.stmts.per_1000:.2f} per 1000 rows ({p.stmts.breakdown()})")
        if p.backlog:
            b = p.backlog
            lines.append(f"    backlog ({b.samples} samples of the spool's state, every 0.25 s until drained): at most"
                         f" {b.max_waiting:,} records waiting; estimated lag (waiting / drain rate, as /health"
                         f" computes it) at most {b.max_lag_s:.1f} s, {b.max_lag_at_s:.0f} s after sampling began"
                         f" (just before the load), at a drain rate of {b.rate_at_max:,.0f} rows/s (last rate"
                         f" {b.last_rate:,.0f}); oldest"
                         f" unflushed record at most {b.max_oldest_s:.1f} s old; drained {fmt(p.drain_s, '.1f')} s"
                         " after the load window")
        if p.check:
            lines.append("    0-lost check: " + describe_check(p.check))
    if f.loaddata:
        d = f.loaddata
        lines += ["(loaddata) LOAD DATA LOCAL INFILE single stream (loadtests/direct_load.py load_data_infile)",
                  f"    {d.rows:,} records in {d.seconds:.1f} s = {d.rows_s:,.0f} rows/s, {d.keys_s:,.0f} keys/s;"
                  f" statements per 1000 rows {d.stmts.per_1000:.2f} ({d.stmts.breakdown()}); CPU: {d.cpu}",
                  "    input: the service phase's acknowledged requests rebuilt from the load generator's record"
                  " (same bodies, acknowledgement order, batches of whole requests up to 1000 records)"]
        if d.check:
            lines.append("    same data as acknowledged: " + describe_check(d.check))
    return lines


def describe_check(c: KeyCheck) -> str:
    return (f"{c.acked_keys:,} acknowledged task keys: {c.ok:,} hold their last acknowledged content,"
            f" {c.missing:,} missing, {c.stale:,} stale ({c.unsure_keys:,} keys had a send without a clear answer;"
            f" {c.unacked_rows:,} rows of keys never acknowledged); {c.seconds:.1f} s")


def _target(title: str, value: str, ok: bool | None) -> str:
    mark = "n/a " if ok is None else "PASS" if ok else "FAIL"
    return f"  [{mark}] {title:<58} {value}"


def targets(f: Figures, settings: Settings) -> list[str]:
    max_lag, writers = settings.spool.max_lag, settings.flush.writers
    s, n, o, d = f.phases.get("service"), f.phases.get("naive"), f.phases.get("open"), f.loaddata
    lines = []
    if s and n:
        ratio = s.keys_s / n.keys_s if n.keys_s else float("inf")
        lines.append(_target(f"sustained >= {TARGET_VS_NAIVE:g}x naive write-through",
                             f"{s.keys_s:,.0f} vs {n.keys_s:,.0f} keys/s = {ratio:.2f}x", ratio >= TARGET_VS_NAIVE))
    if s and d:
        ratio = s.keys_s / d.keys_s
        lines.append(_target(f"sustained >= {TARGET_VS_LOAD_DATA:g}x LOAD DATA single stream",
                             f"{s.keys_s:,.0f} vs {d.keys_s:,.0f} keys/s = {ratio:.2f}x", ratio >= TARGET_VS_LOAD_DATA))
    if s and s.backlog:
        b = s.backlog
        ok = b.max_lag_s <= max_lag and s.drain_s <= max_lag
        lines.append(_target(f"backlog never above spool.max_lag ({max_lag:g} s of drain)",
                             f"estimated lag at most {b.max_lag_s:.1f} s; drained {fmt(s.drain_s, '.1f')} s after"
                             f" the load (oldest record waited at most {b.max_oldest_s:.1f} s)", ok))
        full = s.load.statuses.get("503", 0)
        lines.append(_target("no 503 (spool full) under overload", f"{full:,} 503s; answers {s.load.statuses}",
                             full == 0))
    if o:
        share = f"{o.load.rows_per_s / s.rows_s:.0%} of the sustained {s.rows_s:,.0f} rows/s" if s else "no service phase"
        lines.append(_target(f"p99 ack < {TARGET_P99_MS:g} ms at {TARGET_OPEN_SHARE:.0%} of the sustained rate",
                             f"p99 {o.load.p99_ms:.1f} ms (p50 {o.load.p50_ms:.1f}, p99.9 {o.load.p999_ms:.1f})"
                             f" at {o.load.target_rate_rows_s:,.0f} rows/s scheduled; acknowledged"
                             f" {o.load.rows_per_s:,.0f} rows/s, {share}",
                             o.load.p99_ms < TARGET_P99_MS))
    if s and s.stmts:
        lines.append(_target(f"<= {TARGET_STATEMENTS_PER_1000:g} statements per 1000 rows",
                             f"{s.stmts.per_1000:.2f} per 1000 rows ({s.stmts.questions:,} for {s.stmts.rows:,}"
                             f" rows, all {writers} writers; issue 13 says 'per writer': the same ratio when the"
                             " writers share the rows evenly)",
                             s.stmts.per_1000 <= TARGET_STATEMENTS_PER_1000))
    for p in (s, o):
        if p and p.check:
            lines.append(_target(f"0 rows lost ({p.load.name} phase)", f"{p.check.lost:,} lost of"
                                 f" {p.check.acked_keys:,} acknowledged keys", p.check.lost == 0 and p.load.flushed))
    return lines


def report(f: Figures) -> str:
    rule = "=" * 120
    lines = ["", rule, "persistence-service sustained end-to-end benchmark (loadtests/bench_sustained.py)", rule,
             *f.machine, f.mariadb, f.server, f.load, f"service environment: {f.env}", "", *table(f), "",
             "keys/s: distinct task keys in the database / s; s: load start until everything acknowledged was in"
             " the database (naive: the load time, nothing to drain); rows: task rows acknowledged, updates"
             " included, + sessions", "", *details(f), "", "targets", *f.targets]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------

def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("PS_"):
            raise argparse.ArgumentTypeError(f"--env takes PS_<SECTION>_<KEY>=VALUE, got {item!r}")
        env[key] = value
    return env


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of closed-loop load (default 120)")
    parser.add_argument("--quick", action="store_true", help="10 s phases, for a smoke run (~2 minutes)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)} (loaddata, and open without"
                             " --open-rate, need service)")
    parser.add_argument("--buffer-pool", default="128M", help="MariaDB innodb_buffer_pool_size (default 128M)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="added to the service's environment, e.g. PS_FLUSH_WRITERS=1 (repeatable)")
    parser.add_argument("--updates", type=float, default=0.3, help="share of requests that update (default 0.3)")
    parser.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--connections", type=int, default=8, help="connections per client process (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="ingest (and naive app) workers (default 2)")
    parser.add_argument("--open-rate", type=float, default=0.0,
                        help="rows/s for the open phase instead of 80%% of the service phase's; lets it run alone")
    parser.add_argument("--drain-timeout", type=float, default=600.0, help="longest wait for a drain (default 600 s)")
    parser.add_argument("--wait-quiet", type=float, default=0.0,
                        help="before each phase wait up to this long for other jobs to leave the machine idle")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, datadir)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 10.0)
    try:
        args.env = parse_env(args.env)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    args.wanted = [p.strip() for p in args.phases.split(",") if p.strip()]
    needs_service = {"loaddata"} if args.open_rate else {"loaddata", "open"}
    if set(args.wanted) - set(PHASES) or (needs_service & set(args.wanted) and "service" not in args.wanted):
        parser.error(f"--phases takes a subset of {','.join(PHASES)}; loaddata (and open without --open-rate)"
                     " need service")
    return args


def run(args: argparse.Namespace, bench: SustainedBench) -> Figures:
    figures = Figures(machine_lines(), f"{bench.mariadb.describe()}; server {bench.monitor.version()}",
                      server_variables(bench.monitor.conn),
                      f"load: {args.clients} client processes x {args.connections} connections,"
                      f" {TASKS_PER_REQUEST} tasks per request, {args.updates:.0%} of requests update earlier tasks,"
                      f" Retry-After honoured; closed loop {args.duration:.0f} s", bench.env, {})
    phases = figures.phases
    if "service" in args.wanted:
        phases["service"] = bench.sustained_phase("service", "service, closed loop", args.duration)
    if "naive" in args.wanted:
        phases["naive"] = bench.naive_phase(args.duration)
    if "loaddata" in args.wanted:
        figures.loaddata = bench.load_data_phase()
    if "open" in args.wanted:
        rate = args.open_rate or TARGET_OPEN_SHARE * phases["service"].rows_s
        share = f"{rate:,.0f} rows/s" if args.open_rate else f"{TARGET_OPEN_SHARE:.0%}"
        phases["open"] = bench.sustained_phase("open", f"service, open loop at {share}",
                                             min(OPEN_MAX_S, args.duration), rate)
    figures.targets = targets(figures, bench.settings or Settings())
    figures.summary = headline(figures)
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def work(bench: SustainedBench) -> tuple[str, Figures]:
        figures = run(args, bench)
        return report(figures), figures
    return bench_main(args, "bench_sustained_", SustainedBench, work)


if __name__ == "__main__":
    sys.exit(main())
