"""Crash drill: kill -9 processes of a running service (an ingest worker, the
granian ingest main process, the flusher, the query server, the supervisor
itself) and restart its MariaDB, all under a steady write load; measure how
long each recovery takes; then check with the oracle of testkit/load.py
that the database holds exactly what was acknowledged.

Shared by `python -m loadtests.crash_drill` (the long run whose figures go
into docs/RELIABILITY.md) and tests/faults/test_crash_drill.py (a short one).

How the pieces fit:

* the service is the real `persistence-service run` (testkit.service.Service) on
  a private MariaDB (testkit.mariadb.PrivateMariaDB);
* a `Load` posts task batches from background threads and records every
  acknowledged write;
* after each kill a probe posts one-task batches on fresh connections until
  one answers 202 ("202 again"), then the drill waits until the whole process
  tree is back as it was at start (as many flusher, granian main and worker
  processes of each server), the flusher has published a heartbeat since the
  kill when it or the supervisor was the victim, and the query server answers
  /health ("restored"); "in db" is when everything acknowledged before the
  fault was in the database (the spool's flushed_seq passed its last seq);
* when the supervisor is killed its children stop on their own
  (PR_SET_PDEATHSIG) and the drill starts the service again on the same
  folder once every process of the old tree is gone, as systemd would (a
  process still there after STRAGGLER_S fails the drill);
* a database restart is a clean stop, `db_down` seconds down (kills go on
  meanwhile), a start on the same port; "restored" is when /health says the
  database is healthy again.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pymysql

from testkit.mariadb import PrivateMariaDB
from testkit.load import Load, check_sink, flush_until_ok, now_us
from testkit.procs import cmdline, descendants, is_alive, state_and_parent
from testkit.service import TASKS, Service, sink_rows

ROLES = ("ingest-worker", "ingest-main", "flusher", "query", "supervisor")
DB_RESTART = "db-restart"
SLOW_S = 5.0  # a recovery slower than this prints what the service logged meanwhile
STRAGGLER_S = 45.0  # a child of a killed supervisor must be gone this long after it (flusher drain + stop)
DB_OPTIONS = {"innodb_buffer_pool_size": "128M", "innodb_log_file_size": "48M"}
# What the service's own config.toml ships, for the timings that decide recovery
# (testkit.service.Service writes faster test values).
PRODUCTION_TIMINGS = {"PS_SERVICE_HEALTH_CHECK_INTERVAL": "1.0", "PS_FLUSH_MAX_DELAY": "1.0",
                      "PS_FLUSH_RETRY_INITIAL": "0.2", "PS_FLUSH_RETRY_MAX": "5.0"}


@dataclass
class DrillConfig:
    kills: int = 20
    db_restarts: int = 2
    interval: float = 3.0  # seconds from one recovery to the next fault
    seed: int = 0
    db_down: float = 10.0
    workers: int = 2  # ingest workers
    shutdown_grace: float = 5.0
    load_threads: int = 2
    load_batch: int = 100
    load_pause: float = 0.05  # per load thread, between requests
    warmup_records: int = 2_000  # acknowledged before the first fault
    recover_timeout: float = 60.0  # a recovery that takes longer fails the drill
    max_seconds: float = 600.0  # the fault phase stops here whatever is left
    flush_timeout: float = 180.0  # final POST /flush until 200


@dataclass
class Step:
    number: int
    at_s: float  # since the first fault
    event: str
    pid: int | None = None
    accepted_s: float | None = None  # until POST tasks/batch answered 202 again
    restored_s: float | None = None  # until the process tree was whole again / the database healthy
    in_db_s: float | None = None  # until everything acknowledged before the fault was in the database
    note: str = ""
    ok: bool = True


@dataclass
class Result:
    config: DrillConfig
    steps: list[Step] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def report(self) -> str:
        return "\n".join(self.lines)


class _Unsupervised:
    """What a Load sees of the service: its port and client, no process.
    Load gives up 10 s after it first saw the service process exit and never
    resets that clock, so across several supervisor restarts it must not see
    the process at all (the drill decides when the service is gone)."""

    proc = None

    def __init__(self, service: Service) -> None:
        self.ingest_port = service.ingest_port
        self.http = service.http


def plan(kills: int, db_restarts: int, rng: random.Random) -> list[str]:
    """Faults in order: every role equally often (the remainder drawn at
    random), shuffled; database restarts spread evenly between them."""
    whole, rest = divmod(kills, len(ROLES))
    roles = [role for role in ROLES for _ in range(whole)] + rng.sample(ROLES, rest)
    rng.shuffle(roles)
    actions = list(roles)
    for i in range(db_restarts):
        actions.insert(round((i + 1) * len(roles) / (db_restarts + 1)) + i, DB_RESTART)
    return actions


class Drill:
    def __init__(self, folder: Path, config: DrillConfig, out: Callable[[str], None] = print) -> None:
        self.folder = Path(folder)
        self.config = config
        self._out = out
        self.result = Result(config)
        self.rng = random.Random(config.seed)
        self.db = PrivateMariaDB(self.folder / "mariadb", options=DB_OPTIONS)
        self.sink_url = self.db.url("ps_drill")
        self.service: Service | None = None
        self.load: Load | None = None
        self.probe: Load | None = None
        self._probe_client = httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0))
        self._groups: list[int] = []  # process groups of every supervisor started
        self._db_start_due: float | None = None
        self._started = 0.0
        self._undrained: list[tuple[Step, int, float]] = []  # (step, spool seq at the fault, fault time)
        self._shape: dict[str, int] = {}  # processes of each kind when whole (see _baseline)

    # -- output -----------------------------------------------------------------

    def say(self, line: str = "") -> None:
        self.result.lines.append(line)
        self._out(line)

    def fail(self, message: str) -> None:
        self.result.failures.append(message)
        self.say(f"FAILURE: {message}")

    # -- the run ----------------------------------------------------------------

    def run(self) -> Result:
        cfg = self.config
        actions = plan(cfg.kills, cfg.db_restarts, self.rng)
        self.say(f"crash drill: seed {cfg.seed}, {cfg.kills} kills, {cfg.db_restarts} database restarts "
                 f"({cfg.db_down:g} s down), interval {cfg.interval:g} s, {cfg.workers} ingest workers")
        self.say(f"machine: {os.cpu_count()} CPUs, load average {_loadavg()}; load: {cfg.load_threads} threads "
                 f"x {cfg.load_batch}-task batches, {cfg.load_pause:g} s pause; service shutdown_grace "
                 f"{cfg.shutdown_grace:g} s")
        started = time.monotonic()
        self.db.start()
        self.say(f"MariaDB (private) on 127.0.0.1:{self.db.port} up after {time.monotonic() - started:.1f} s; "
                 f"sink {self.sink_url}")
        self.service = Service(self.folder / "svc", self.sink_url, workers=cfg.workers,
                               shutdown_grace=cfg.shutdown_grace)
        timings = {k: os.environ[k] for k in sorted(PRODUCTION_TIMINGS) if k in os.environ}
        if timings:
            self.say("timings from the environment: " + ", ".join(f"{k}={v}" for k, v in timings.items()))
        self._start_service()
        self.service.wait_ready(60)
        self._baseline()
        self.say("process tree: " + ", ".join(f"{n} {kind}" for kind, n in self._shape.items()))
        view = _Unsupervised(self.service)
        self.load = Load(view, tag="drill", threads=cfg.load_threads, batch=cfg.load_batch,  # type: ignore[arg-type]
                         pause=cfg.load_pause, session_updates=0.3)
        self.probe = Load(view, tag="P", sessions=1)  # type: ignore[arg-type]
        self.probe.create_sessions()
        self.load.start()
        self.load.wait_acked(cfg.warmup_records, 60)
        self.say(f"plan: {', '.join(actions)}")
        self.say("")
        self._started = time.monotonic()
        try:
            self._faults(actions)
        finally:
            self.load.stop(120)
        fault_s = time.monotonic() - self._started
        self._finish(fault_s)
        return self.result

    def _faults(self, actions: list[str]) -> None:
        cfg = self.config
        deadline = self._started + cfg.max_seconds
        next_at = time.monotonic()
        for done, action in enumerate(actions):
            if time.monotonic() > deadline:
                self.fail(f"ran out of time (max_seconds {cfg.max_seconds:g}) after {done} of {len(actions)} faults")
                break
            if action == DB_RESTART and self._db_start_due is not None:
                next_at = max(next_at, self._db_start_due)
            self._idle_until(next_at)
            step = Step(len(self.result.steps) + 1, time.monotonic() - self._started, action)
            self.result.steps.append(step)
            log_from = self._log_size()
            if action == DB_RESTART:
                self._db_stop(step)
            else:
                self._kill(step, action)
            self._print_step(step)
            if max(step.accepted_s or 0, step.restored_s or 0) > SLOW_S or not step.ok:
                self._print_log_since(log_from)
            if not step.ok:
                self.fail(f"step {step.number} ({step.event}): {step.note}")
                break
            next_at = time.monotonic() + cfg.interval * self.rng.uniform(0.5, 1.5)
        if self._db_start_due is not None:
            self._idle_until(self._db_start_due)

    def _idle_until(self, when: float) -> None:
        """Wait (the load goes on) until `when`, starting the database when it is due."""
        while True:
            now = time.monotonic()
            if self._db_start_due is not None and now >= self._db_start_due:
                step = Step(len(self.result.steps) + 1, now - self._started, "db start")
                self.result.steps.append(step)
                self._db_start(step)
                self._print_step(step)
                if not step.ok:
                    self.fail(f"step {step.number} ({step.event}): {step.note}")
            if now >= when:
                return
            self._check_supervisor()
            self._poll_drained()
            time.sleep(min(0.05, when - now))

    def _check_supervisor(self) -> None:
        service = self.service
        assert service is not None and service.proc is not None
        code = service.proc.poll()
        if code is not None:
            self.fail(f"the supervisor exited on its own (exit {code}); last lines of its log:\n{service.tail(20)}")
            self._start_service()  # as systemd would, so that the data check can still run

    # -- kills --------------------------------------------------------------------

    def _kill(self, step: Step, role: str) -> None:
        service = self.service
        assert service is not None and service.proc is not None
        victim = self._victim(role)
        step.pid = victim
        if victim is None:
            step.ok, step.note = False, f"found no {role} process to kill: {service.children()}"
            return
        killed_us = now_us()
        main_before = _tree(service)["ingest-main"]
        self._watch_drain(step)
        if role == "supervisor":
            tree = descendants(victim)
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            service.proc.wait(10)
            # Its children stop by themselves (PR_SET_PDEATHSIG); like systemd, start
            # again once the old processes are gone.
            gone = self._until(lambda: not any(is_alive(p) for p in tree), killed, STRAGGLER_S)
            if gone is None:
                left = [f"{p} ({cmdline(p)[:60]})" for p in tree if is_alive(p)]
                step.ok, step.note = False, f"children still run {STRAGGLER_S:g} s after the supervisor died: {left}"
                for pid in tree:
                    if is_alive(pid) and _is_ours(pid):
                        os.kill(pid, signal.SIGKILL)
                return
            step.note = f"its {len(tree)} processes were gone {gone - killed:.2f} s after it; started again"
            self._start_service()
        else:
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
        accepted = self._probe_until_202(killed)
        if accepted is None:
            step.ok, step.note = False, f"no 202 within {self.config.recover_timeout:g} s"
            return
        step.accepted_s = accepted - killed
        beat_since = killed_us if role in ("flusher", "supervisor") else 0
        restored = self._until(lambda: self._whole(victim, beat_since), killed, self.config.recover_timeout)
        if restored is None:
            step.ok, step.note = False, (f"process tree not restored within {self.config.recover_timeout:g} s: "
                                         f"{self._topology()}")
            return
        step.restored_s = restored - killed
        if role == "ingest-worker" and _tree(service)["ingest-main"] != main_before:
            # granian exits when one worker crashes twice within 5.5 s ("crash loop detected")
            step.note = "granian ingest main exited too (crash loop rule); the supervisor restarted ingest"

    def _victim(self, role: str) -> int | None:
        service = self.service
        assert service is not None and service.proc is not None
        if role == "supervisor":
            return service.proc.pid
        tree = _tree(service)
        pids = tree["query-main"] + tree["query-worker"] if role == "query" else tree[role]
        return self.rng.choice(sorted(pids)) if pids else None

    def _baseline(self, timeout: float = 30) -> None:
        """The process tree as the supervisor starts it: how many processes of
        each kind (read once everything has started and stayed so for a second)."""
        service = self.service
        assert service is not None
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            counts = {kind: len(pids) for kind, pids in _tree(service).items()}
            if counts != last:
                last, since = counts, time.monotonic()
            elif all(counts.values()) and time.monotonic() - since >= 1.0:
                self._shape = counts
                return
            time.sleep(0.05)
        raise RuntimeError(f"the process tree did not settle within {timeout:g} s: {last}")

    def _whole(self, victim: int, since_us: int) -> bool:
        """The process tree is as the supervisor starts it, without the victim;
        the flusher has published a heartbeat since since_us; query answers."""
        service = self.service
        assert service is not None
        tree = _tree(service)
        if any(victim in pids for pids in tree.values()):
            return False
        if {kind: len(pids) for kind, pids in tree.items()} != self._shape:
            return False
        if _heartbeat_us(service.spool_path) <= since_us:
            return False
        try:
            answer = httpx.get(f"http://127.0.0.1:{service.query_port}/health", timeout=2)
        except httpx.HTTPError:
            return False
        return answer.status_code in (200, 503)

    def _topology(self) -> dict[str, Any]:
        service = self.service
        assert service is not None
        return {"tree": _tree(service), "expected": self._shape, "heartbeat_us": _heartbeat_us(service.spool_path)}

    def _probe_until_202(self, since: float) -> float | None:
        """Post one-task batches (fresh connection each) until one gets 202; the time it answered."""
        probe, service = self.probe, self.service
        assert probe is not None and service is not None
        url = f"http://127.0.0.1:{service.ingest_port}{TASKS}"
        deadline = since + self.config.recover_timeout
        while time.monotonic() < deadline:
            before = probe.acked_requests
            probe._post(self._probe_client, url, [f"P-i-k{len(probe.writes)}"])  # noqa: SLF001 (records the write)
            if probe.acked_requests > before:
                return time.monotonic()
        return None

    def _start_service(self) -> None:
        service = self.service
        assert service is not None
        service.start(wait=False)
        assert service.proc is not None
        self._groups.append(service.proc.pid)  # start_new_session: the supervisor leads its group

    # -- database restarts -----------------------------------------------------

    def _db_stop(self, step: Step) -> None:
        service = self.service
        assert service is not None
        started = time.monotonic()
        self._watch_drain(step)
        self.db.stop()
        stopped = time.monotonic()
        self._db_start_due = stopped + self.config.db_down
        accepted = self._probe_until_202(stopped)
        if accepted is None:
            step.ok, step.note = False, f"no 202 within {self.config.recover_timeout:g} s with the database down"
            return
        step.accepted_s = accepted - stopped

        def degraded() -> bool:
            body = _health(service)
            return body is not None and body["database"] == "unhealthy"
        seen = self._until(degraded, stopped, self.config.recover_timeout)
        step.note = (f"clean stop took {stopped - started:.1f} s; "
                     + (f"/health: database unhealthy after {seen - stopped:.1f} s" if seen else
                        "/health never said the database is unhealthy"))

    def _db_start(self, step: Step) -> None:
        service = self.service
        assert service is not None
        self._db_start_due = None
        started = time.monotonic()
        self.db.start()
        up = time.monotonic()

        accepted = self._probe_until_202(up)
        step.accepted_s = accepted - up if accepted else None

        def healthy() -> bool:
            body = _health(service)
            return body is not None and body["database"] == "healthy"
        seen = self._until(healthy, up, self.config.recover_timeout)
        if seen is None:
            step.ok, step.note = False, f"/health did not say the database is healthy within {self.config.recover_timeout:g} s"
            return
        step.restored_s = seen - up
        step.note = f"mariadbd answered {up - started:.1f} s after start; restored = /health database healthy"

    # -- the end ----------------------------------------------------------------------

    def _finish(self, fault_s: float) -> None:
        load, probe, service = self.load, self.probe, self.service
        assert load is not None and probe is not None and service is not None
        self._check_supervisor()
        self._until(lambda: not self._undrained, time.monotonic(), self.config.flush_timeout)
        self.say("")
        self.say("per fault: 202 again = until POST tasks/batch answered 202; restored = until the process tree "
                 "was whole again (db start: until /health said the database is healthy); in db = until "
                 "everything acknowledged before the fault was in the database")
        self._print_table()
        self.say("")
        started = time.monotonic()
        try:
            answer = flush_until_ok(service, self.config.flush_timeout)
            self.say(f"final POST /flush: 200 after {time.monotonic() - started:.1f} s: {answer.json()}")
        except AssertionError as exc:
            self.fail(f"final POST /flush: {exc}")
        audit = _audit(self.sink_url, load)
        probe_audit = _audit(self.sink_url, probe)
        duplicated = _duplicates(self.sink_url)
        body = _health(service) or {}
        dead = body.get("buffer", {}).get("dead_letters")
        fig = self.result.figures
        fig.update(
            fault_seconds=round(fault_s, 1),
            requests_acknowledged=(load.acked_requests + probe.acked_requests + load.acked_session_requests
                                   + probe.acked_session_requests),
            records_acknowledged=(load.acked_records + probe.acked_records + load.acked_session_records
                                  + probe.acked_session_records),
            session_writes_acknowledged=load.acked_session_records + probe.acked_session_records,
            requests_failed=load.failed_requests + probe.failed_requests,
            task_keys_acknowledged=audit["acked_keys"] + probe_audit["acked_keys"],
            rows_lost=audit["lost"] + probe_audit["lost"],
            rows_duplicated=duplicated,
            rows_from_unacknowledged=audit["from_unacked"] + probe_audit["from_unacked"],
            rows_never_acknowledged=audit["never_acked"] + probe_audit["never_acked"],
            dead_letters=dead)
        statuses = load.statuses + probe.statuses
        self.say(f"fault phase: {fault_s:.0f} s (load average now {_loadavg()}); load outcomes: "
                 + ", ".join(f"{k} x {v}" for k, v in sorted(statuses.items(), key=lambda kv: -kv[1])))
        self.say(f"requests acknowledged: {fig['requests_acknowledged']} "
                 f"(not acknowledged: {fig['requests_failed']})")
        self.say(f"records acknowledged: {fig['records_acknowledged']} "
                 f"({fig['task_keys_acknowledged']} distinct task ids, {fig['session_writes_acknowledged']} "
                 f"session writes, each session checked at its last acknowledged version)")
        self.say(f"rows lost: {fig['rows_lost']}")
        self.say(f"rows duplicated: {duplicated}")
        self.say(f"rows stored from unacknowledged requests: {fig['rows_from_unacknowledged']} "
                 f"(of which task ids never acknowledged at all: {fig['rows_never_acknowledged']})")
        self.say(f"dead letters: {dead}")
        for name, result in (("load", audit), ("probe", probe_audit)):
            if result["problems"]:
                self.fail(f"oracle ({name}): {result['problems']}")
        if fig["rows_lost"]:
            self.fail(f"{fig['rows_lost']} acknowledged rows lost")
        if duplicated:
            self.fail(f"{duplicated} task ids stored more than once")
        if dead:
            self.fail(f"{dead} dead letters")
        unexpected = load.unexpected + probe.unexpected
        if unexpected:
            self.fail(f"{len(unexpected)} unexpected answers (not 202/503/429), e.g. {unexpected[:3]}")
        self.say("")
        self._print_summary()
        errors = _log_errors(service.log)
        if errors:
            self.say("")
            self.say(f"service log: {sum(errors.values())} error lines, by message:")
            for message, count in errors.most_common(12):
                self.say(f"  {count:5d} x {message}")
        self.say("")
        self.say("PASS" if self.result.passed else f"FAIL ({len(self.result.failures)} failures: "
                 + "; ".join(f.splitlines()[0][:200] for f in self.result.failures) + ")")

    def _print_step(self, step: Step) -> None:
        """A progress line as the drill goes (the full table comes at the end)."""
        self.say(f"  [{step.at_s:6.1f} s] #{step.number} {step.event}"
                 + (f" pid {step.pid}" if step.pid else "")
                 + f": 202 again {_secs(step.accepted_s, ' s')}, restored {_secs(step.restored_s, ' s')}"
                 + (f"; {step.note}" if step.note else ""))

    def _log_size(self) -> int:
        assert self.service is not None
        try:
            return self.service.log.stat().st_size
        except OSError:
            return 0

    def _print_log_since(self, offset: int, limit: int = 20) -> None:
        """The service's warnings and errors logged since offset (to explain a slow recovery)."""
        assert self.service is not None
        with open(self.service.log, "rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
        notable = [line for line in lines if '"level":"info"' not in line and line.strip()]
        self.say(f"    service log meanwhile ({len(notable)} warnings/errors of {len(lines)} lines; "
                 f"last {min(limit, len(notable))}):")
        for line in notable[-limit:]:
            self.say(f"      {line[:240]}")

    def _print_table(self) -> None:
        self.say(f"{'#':>3} {'t (s)':>7}  {'fault':<16} {'pid':>8} {'202 again (s)':>14} {'restored (s)':>13} "
                 f"{'in db (s)':>10}  note")
        for step in self.result.steps:
            self.say(f"{step.number:>3} {step.at_s:>7.1f}  {step.event:<16} {step.pid or '':>8} "
                     f"{_secs(step.accepted_s):>14} {_secs(step.restored_s):>13} {_secs(step.in_db_s):>10}  "
                     f"{step.note}")

    def _print_summary(self) -> None:
        self.say("recovery by fault (seconds; min / median / max):")
        by_event: dict[str, list[Step]] = {}
        for step in self.result.steps:
            by_event.setdefault(step.event, []).append(step)
        for event, steps in by_event.items():
            accepted = [s.accepted_s for s in steps if s.accepted_s is not None]
            restored = [s.restored_s for s in steps if s.restored_s is not None]
            in_db = [s.in_db_s for s in steps if s.in_db_s is not None]
            self.say(f"  {event:<14} x{len(steps):<2} 202 again {_spread(accepted):<20} restored "
                     f"{_spread(restored):<20} in db {_spread(in_db)}")

    def _until(self, check: Callable[[], bool], since: float, timeout: float) -> float | None:
        """Poll check() until true; the time it first was, or None after since + timeout."""
        deadline = since + timeout
        while time.monotonic() < deadline:
            if check():
                return time.monotonic()
            self._poll_drained()
            time.sleep(0.02)
        return None

    def _watch_drain(self, step: Step) -> None:
        assert self.service is not None
        progress = _spool_progress(self.service.spool_path)
        if progress is not None:  # else in_db stays unknown ("-")
            self._undrained.append((step, progress[0], time.monotonic()))

    def _poll_drained(self) -> None:
        """Fill in in_db_s of the faults whose acknowledged writes are all in the database now."""
        if not self._undrained:
            return
        assert self.service is not None
        progress = _spool_progress(self.service.spool_path)
        if progress is None:
            return
        flushed = progress[1]
        now = time.monotonic()
        for item in list(self._undrained):
            step, target, since = item
            if flushed >= target:
                step.in_db_s = now - since
                self._undrained.remove(item)

    # -- cleanup --------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything this drill started (also after a failure or Ctrl-C)."""
        for load in (self.load, self.probe):
            if load is not None:
                load._stop.set()  # noqa: SLF001 (threads are daemons; do not wait on a failed run)
        for group in self._groups:
            for pid in _group_members(group):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.service is not None:
            self.service.kill()
        self.db.kill()
        self._probe_client.close()


def _secs(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{unit}"


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _health(service: Service) -> dict | None:
    try:
        return httpx.get(f"http://127.0.0.1:{service.ingest_port}/health", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None


def _tree(service: Service) -> dict[str, list[int]]:
    """The live processes under the supervisor by kind: flusher, ingest-main
    and query-main (granian main processes: the supervisor's own children),
    ingest-worker and query-worker (their children)."""
    assert service.proc is not None
    supervisor = str(service.proc.pid)
    tree: dict[str, list[int]] = {k: [] for k in ("flusher", "ingest-main", "ingest-worker", "query-main",
                                                  "query-worker")}
    for role, pids in service.children().items():
        for pid in pids:
            state, parent = state_and_parent(pid)
            if state in ("", "Z", "X"):
                continue
            if role == "flusher":
                tree["flusher"].append(pid)
            else:
                tree[f"{role}-{'main' if parent == supervisor else 'worker'}"].append(pid)
    return tree


def _spool_progress(spool: Path) -> tuple[int, int] | None:
    """(the last seq ever appended, flushed_seq) of the spool file; None when it cannot be read now."""
    try:
        conn = sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=5)
        try:
            conn.execute("BEGIN")
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
            flushed = conn.execute("SELECT flushed_seq FROM state").fetchone()[0]
            conn.execute("COMMIT")
            return (row[0] if row else 0), flushed
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def _heartbeat_us(spool: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT heartbeat_us FROM state").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _audit(sink_url: str, load: Load) -> dict[str, Any]:
    """Counts for the report, and the oracle's verdict (check_sink)."""
    prefix = f"{load.tag}-"
    stored = {r["task_id"]: r["retry_count"] for r in sink_rows(sink_url, "translation_tasks", "task_id, retry_count")
              if r["task_id"].startswith(prefix)}
    acked = load.acked_keys()
    from_unacked = never_acked = 0
    for key, n in stored.items():
        history = load.writes.get(key)
        if history is None:
            continue  # the oracle reports it as stored but never sent
        if 0 <= n < len(history) and not history[n].acked:
            from_unacked += 1
        if not any(w.acked for w in history):
            never_acked += 1
    try:
        check_sink(sink_url, load)
        problems = ""
    except AssertionError as exc:
        problems = str(exc)
    return {"acked_keys": len(acked), "lost": len(acked - stored.keys()), "from_unacked": from_unacked,
            "never_acked": never_acked, "problems": problems}


def _duplicates(sink_url: str) -> int:
    url = urlsplit(sink_url)
    conn = pymysql.connect(host=url.hostname, port=url.port or 3306, user=url.username or "root",
                           password=url.password or "", database=url.path.strip("/"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT task_id, COUNT(*) FROM translation_tasks GROUP BY task_id HAVING COUNT(*) > 1")
            return len(cur.fetchall())
    finally:
        conn.close()


def _group_members(group: int) -> list[int]:
    """Processes of one process group that belong to the service."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and _is_ours(int(entry)):
            members.append(int(entry))
    return members


def _is_ours(pid: int) -> bool:
    command = cmdline(pid)
    return any(part in command for part in ("core.cli", "granian", "-m flusher"))


def _log_errors(log: Path) -> Counter:
    """error/critical lines of the service log, grouped by their message's first 100 characters."""
    counts: Counter = Counter()
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return counts
    for line in text.splitlines():
        if '"level":"error"' in line or '"level":"critical"' in line or "Traceback" in line:
            start = line.find('"msg":"')
            counts[line[start + 7:start + 107] if start >= 0 else line[:100]] += 1
    return counts
