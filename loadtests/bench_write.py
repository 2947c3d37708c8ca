"""Write-path benchmark: ingest throughput, ack latency, drain into MariaDB.

    cd /work/main && .venv/bin/python -m loadtests.bench_write            # ~10 min
    cd /work/main && .venv/bin/python -m loadtests.bench_write --quick    # ~2 min smoke run

Everything is measured in one run, on this machine, against a private
MariaDB (testkit/mariadb.py) whose configuration is printed with the
figures. Client processes (loadtests/loadgen.py) post realistic task batches
(loadtests/bodies.py: 100 tasks per request, ~74 KB of mixed Latin + CJK
text; each process posts its sessions first, so no task is an orphan).

Phases, each on a fresh spool and a fresh database:
  (a) sync=full, closed loop at max load, then /flush until everything is in MariaDB
  (b) sync=normal, the same
  (c) validate-only ceiling: loadtests/null_app.py (same granian, Starlette,
      body reading, msgspec validation and answer, no spool), same workers
  (d) sync=full at half of (a)'s accepted rows/s, open loop (fixed schedule;
      latency counted from the scheduled send time, so queueing shows)
  drain: `core.cli ingest` alone fills a spool, `core.cli flusher` alone
      drains it (pure drain rows/s); the same entries are then loaded straight
      into fresh databases (loadtests/direct_load.py) for comparison.

Every child runs in its own process group and is killed with it; the
temporary folder (spools, MariaDB datadir) is removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from loadtests.bench_drain import DrainPhase  # noqa: E402
from loadtests.bench_report import DrainResult, LoadResult, RunInfo, machine_lines, report  # noqa: E402
from loadtests.bench_service import HOST, Reaper, ServiceProc, SpoolWatch, free_port  # noqa: E402
from loadtests.bodies import TASKS_PER_REQUEST, task_templates  # noqa: E402
from loadtests.dbstatus import Monitor, statements  # noqa: E402
from loadtests.loadgen import ClientPlan, ClientPool, ClientResult, RawHttp  # noqa: E402
from testkit.mariadb import PrivateMariaDB  # noqa: E402
from loadtests.procstat import CpuWindow, proc_cpu_s, roles_of, wait_quiet  # noqa: E402

logger = logging.getLogger("bench")
PHASES = ("a", "b", "c", "d", "drain")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def summarize(result: LoadResult, clients: list[ClientResult]) -> None:
    lat = sorted(v for c in clients for v in c.latencies_ms)
    statuses: dict[str, int] = {}
    for c in clients:
        for k, v in c.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
    result.requests = len(lat)
    result.rows_accepted_window = sum(c.rows_in_window for c in clients)
    result.rows_accepted_total = sum(c.rows_accepted for c in clients)
    result.rows_per_s = result.rows_accepted_window / result.duration
    result.p50_ms, result.p90_ms = percentile(lat, 0.5), percentile(lat, 0.9)
    result.p99_ms, result.p999_ms = percentile(lat, 0.99), percentile(lat, 0.999)
    result.max_ms = lat[-1] if lat else float("nan")
    result.statuses = statuses
    result.errors = [e for c in clients for e in c.first_errors][:5]
    result.late_ms_max = max((c.late_ms_max for c in clients), default=0.0)


def _failed(results: list[ClientResult]) -> None:
    crashed = [r for r in results if "crash" in r.statuses]
    if crashed:
        raise RuntimeError(f"a client process failed: {crashed[0].first_errors}")


class Bench:
    def __init__(self, args: argparse.Namespace, reaper: Reaper, folder: Path) -> None:
        self.args = args
        self.reaper = reaper
        self.folder = folder
        self.mariadb = PrivateMariaDB(folder / "mariadb")
        self._monitor: Monitor | None = None
        self.run_id = f"{int(time.time()) % 100000:05d}"  # keeps ids of phases and runs apart

    @property
    def monitor(self) -> Monitor:
        assert self._monitor is not None
        return self._monitor

    def start_database(self) -> None:
        logger.info("starting the private MariaDB")
        self.reaper.mariadb = self.mariadb
        self.mariadb.start()
        self._monitor = Monitor(self.mariadb)

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.close()

    def our_pids(self, leader: int | None = None) -> list[int]:
        pids = [self.mariadb.proc.pid] if self.mariadb.proc else []
        return pids + ([pid for group in roles_of(leader).values() for pid in group] if leader else [])

    def plans(self, port: int, phase: str, duration: float, rate_rows_s: float = 0.0,
              max_requests: int = 0) -> list[ClientPlan]:
        n = self.args.clients
        rate = rate_rows_s / TASKS_PER_REQUEST / n
        return [ClientPlan(port=port, tag=f"{phase}{self.run_id}c{i}", connections=self.args.connections,
                           duration=duration, rate=rate, max_requests=max_requests // n) for i in range(n)]

    def drive(self, plans: list[ClientPlan],
              groups: dict[str, list[int]]) -> tuple[list[ClientResult], CpuWindow, float]:
        """Run the clients for their duration; CPU by process over exactly that window."""
        pool = ClientPool(plans)
        self.reaper.pools.append(pool)
        start = pool.start()
        window = CpuWindow({**groups, "mariadbd": self.our_pids()})
        time.sleep(max(0.0, start - time.monotonic()))
        window.start()
        client_cpu0 = {pid: proc_cpu_s(pid) for pid in pool.pids()}
        time.sleep(max(0.0, start + plans[0].duration - time.monotonic()))
        client_cpu = sum(proc_cpu_s(pid) - cpu0 for pid, cpu0 in client_cpu0.items())
        window.stop({"clients": client_cpu}, extra_pids=pool.pids())
        results = pool.results(timeout=120)
        self.reaper.pools.remove(pool)
        _failed(results)
        return results, window, start

    def fill(self, plans: list[ClientPlan]) -> list[ClientResult]:
        """Run the clients until each has sent its max_requests; every answer must be 202."""
        pool = ClientPool(plans)
        self.reaper.pools.append(pool)
        pool.start()
        results = pool.results(timeout=plans[0].duration + 60)
        self.reaper.pools.remove(pool)
        _failed(results)
        bad = {k: v for r in results for k, v in r.statuses.items() if k != "202"}
        if bad:
            raise RuntimeError(f"filling the spool got other answers than 202: {bad} {results[0].first_errors}")
        return results

    # -- (a), (b), (d) ----------------------------------------------------------

    def service_phase(self, name: str, label: str, sync: str, rate_rows_s: float = 0.0) -> LoadResult:
        database = f"bench_{name}"
        self.monitor.drop(database)
        svc = ServiceProc(self.reaper, self.folder / name, self.mariadb.url(database), sync, self.args.workers)
        result = LoadResult(name, label, self.args.duration, target_rate_rows_s=rate_rows_s)
        logger.info("phase %s: %s: starting the service", name, label)
        try:
            svc.start("run")
            svc.wait_ready(need_database=True)
            time.sleep(1.0)  # the flusher's start-up (migrate, first heartbeat) is behind
            result.background = wait_quiet(self.args.wait_quiet, self.our_pids(svc.pid))
            before = self.monitor.status()
            watch = SpoolWatch(svc.spool).start()
            start = self._load(svc, result, name, rate_rows_s)
            self._flush(svc, result, watch, start)
            rows = result.rows_accepted_total + result.sessions_posted
            result.stmts = statements(before, self.monitor.status(), rows)
            result.db_tasks = self.monitor.count(database, "translation_tasks")
        finally:
            svc.stop()
            self.monitor.drop(database)
            shutil.rmtree(svc.folder, ignore_errors=True)
        return result

    def _load(self, svc: ServiceProc, result: LoadResult, name: str, rate_rows_s: float) -> float:
        plans = self.plans(svc.ingest_port, name, self.args.duration, rate_rows_s)
        mode = f"{rate_rows_s:,.0f} rows/s scheduled" if rate_rows_s else "closed loop"
        logger.info("phase %s: load for %.0f s (%d processes x %d connections, %s)", name, self.args.duration,
                    len(plans), plans[0].connections, mode)
        clients, window, start = self.drive(plans, roles_of(svc.pid))
        summarize(result, clients)
        result.sessions_posted = sum(p.sessions for p in plans)
        result.cpu = window.line()
        return start

    def _flush(self, svc: ServiceProc, result: LoadResult, watch: SpoolWatch, start: float) -> None:
        """From the end of the load until /flush answers 200: backlog, lag, drain rates."""
        stopped = watch.read()
        result.backlog_at_stop = stopped[1] if stopped else -1
        logger.info("phase %s: %s rows/s accepted, p99 %.1f ms; %s records in the spool at stop; flushing",
                    result.name, f"{result.rows_per_s:,.0f}", result.p99_ms, f"{result.backlog_at_stop:,}")
        window = CpuWindow({**roles_of(svc.pid), "mariadbd": self.our_pids()})
        window.start()
        flush_started = time.monotonic()
        result.flushed = svc.flush_all(self.args.drain_timeout)
        flushed_at = time.monotonic()
        window.stop()
        watch.stop()
        result.drain_cpu = window.line()
        if result.flushed:
            result.lag_s = flushed_at - flush_started
            result.drain_rows_s = (result.rows_accepted_total + result.sessions_posted) / (flushed_at - start)
        begin, end, last = watch.at(start), watch.at(start + result.duration), watch.last()
        if begin and end and end[0] > begin[0]:
            result.drain_during_load_rows_s = (end[2] - begin[2]) / (end[0] - begin[0])
        if end and last and last[0] > end[0]:
            result.drain_after_load_rows_s = (last[2] - end[2]) / (last[0] - end[0])
        logger.info("phase %s: %s; CPU while flushing: %s", result.name,
                    f"flushed {result.lag_s:.1f} s after the load stopped" if result.flushed
                    else f"NOT flushed within {self.args.drain_timeout:.0f} s", result.drain_cpu)

    # -- (c) --------------------------------------------------------------------

    def null_phase(self) -> LoadResult:
        folder = self.folder / "c"
        folder.mkdir()
        port = free_port()
        logger.info("phase c: validate-only ceiling (loadtests/null_app.py): starting")
        proc = self.reaper.popen(
            [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--no-ws", "--loop", "uvloop",
             "--host", HOST,
             "--port", str(port), "--workers", str(self.args.workers), "--respawn-failed-workers",
             "--log-level", "warning", "loadtests.null_app:create_app"], cwd=ROOT, log_file=folder / "null.log")
        result = LoadResult("c", "validate-only ceiling (no spool)", self.args.duration)
        try:
            _wait_http(port, proc.poll)
            result.background = wait_quiet(self.args.wait_quiet, self.our_pids(proc.pid))
            logger.info("phase c: load for %.0f s", self.args.duration)
            clients, window, _ = self.drive(self.plans(port, "c", self.args.duration), roles_of(proc.pid))
            summarize(result, clients)
            result.cpu = window.line()
            logger.info("phase c: %s rows/s, p99 %.1f ms", f"{result.rows_per_s:,.0f}", result.p99_ms)
        finally:
            self.reaper.kill_group(proc, term_timeout=10)
        return result


def _wait_http(port: int, exited: Callable[[], Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and exited() is None:
        try:
            if RawHttp(HOST, port).call("GET", "/health")[0] == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per load phase (default 20)")
    parser.add_argument("--quick", action="store_true", help="short phases for a smoke run (~2 minutes)")
    parser.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--connections", type=int, default=8, help="connections per client process (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="ingest workers (default 2)")
    parser.add_argument("--drain-rows", type=int, default=0,
                        help="task rows for the pure-drain comparison (default 200000, --quick 30000)")
    parser.add_argument("--drain-timeout", type=float, default=0.0,
                        help="longest wait for a spool to drain (default 300 s, --quick 90 s)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="comma-separated subset of a,b,c,d,drain (d needs a)")
    parser.add_argument("--wait-quiet", type=float, default=0.0,
                        help="before each phase wait up to this many seconds until other jobs leave the machine"
                             " nearly idle (the background load is printed either way)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, spools, datadir)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 5.0)
    args.drain_rows = args.drain_rows or (30_000 if args.quick else 200_000)
    args.drain_timeout = args.drain_timeout or (90.0 if args.quick else 300.0)
    args.wanted = [p.strip() for p in args.phases.split(",") if p.strip()]
    if set(args.wanted) - set(PHASES) or ("d" in args.wanted and "a" not in args.wanted):
        parser.error(f"--phases takes a subset of {','.join(PHASES)}; d needs a")
    return args


def run(args: argparse.Namespace, bench: Bench) -> tuple[dict[str, LoadResult], DrainResult | None]:
    phases: dict[str, LoadResult] = {}
    drain = None
    if "a" in args.wanted:
        phases["a"] = bench.service_phase("a", "sync=full, max load", "full")
    if "b" in args.wanted:
        phases["b"] = bench.service_phase("b", "sync=normal, max load", "normal")
    if "c" in args.wanted:
        phases["c"] = bench.null_phase()
    if "d" in args.wanted:
        phases["d"] = bench.service_phase("d", "sync=full, half of (a)'s rate", "full", phases["a"].rows_per_s / 2)
    if "drain" in args.wanted:
        drain = DrainPhase(bench).run()
    return phases, drain


def run_info(args: argparse.Namespace, bench: Bench) -> RunInfo:
    sizes = [len(t) for t in task_templates("x", 8)]
    load = (f"load: {args.clients} client processes x {args.connections} keep-alive connections (raw HTTP/1.1),"
            f" {TASKS_PER_REQUEST} tasks per request, bodies {min(sizes):,}-{max(sizes):,} bytes,"
            f" {args.duration:.0f} s per load phase; ingest workers {args.workers};"
            " flush.batch_rows 1000, flush.max_delay 1.0 s (the defaults)")
    return RunInfo(machine_lines(), f"{bench.mariadb.describe()}; server {bench.monitor.version()}", load)


def bench_main(args: argparse.Namespace, prefix: str, make_bench: Callable[[argparse.Namespace, Reaper, Path], Any],
               work: Callable[[Any], tuple[str, Any]]) -> int:
    """Run a benchmark: a private MariaDB, work(bench) -> (report text, figures for --json); every process
    started is killed and the temporary folder removed, also on Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    os.chdir(ROOT)  # granian imports the apps under loadtests/ from here
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    reaper = Reaper()
    reaper.folder = None if args.keep else folder
    bench = make_bench(args, reaper, folder)
    began = time.monotonic()
    try:
        bench.start_database()
        text, figures = work(bench)
        print(text)
        print(f"\n(total run time {time.monotonic() - began:.0f} s)")
        if args.json:
            args.json.write_text(msgspec.json.format(msgspec.json.encode(figures).decode()))
        return 0
    except KeyboardInterrupt:
        logger.info("interrupted; cleaning up")
        return 130
    finally:
        bench.close()
        reaper.cleanup()
        if args.keep:
            logger.info("kept %s", folder)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def work(bench: Bench) -> tuple[str, Any]:
        info = run_info(args, bench)
        phases, drain = run(args, bench)
        return report(info, phases, drain), {"info": info, "phases": phases, "drain": drain}
    return bench_main(args, "bench_write_", Bench, work)


if __name__ == "__main__":
    sys.exit(main())
