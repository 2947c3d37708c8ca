"""The drain comparison of the write benchmark: a spool filled by `core.cli
ingest` alone is drained by `core.cli flusher` alone (pure drain rows/s,
statements per 1000 rows), then the same entries are loaded straight into
fresh databases by the two methods of loadtests/direct_load.py, and
CHECKSUM TABLE proves every table holds the same rows."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.records import KIND_TASKS
from core.settings import SinkSettings
from loadtests.bench_report import DirectResult, DrainResult
from loadtests.bench_service import ServiceProc, SpoolWatch
from loadtests.bodies import TASKS_PER_REQUEST
from loadtests.dbstatus import statements
from loadtests.direct_load import Entry, load_data_infile, load_executemany, read_spool
from loadtests.procstat import CpuWindow, wait_quiet
from plugins.mysql import MysqlSink

if TYPE_CHECKING:
    from loadtests.bench_write import Bench

logger = logging.getLogger("bench")
TASKS_TABLE = "translation_tasks"


class DrainPhase:
    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.args = bench.args
        self.monitor = bench.monitor
        self.mariadb = bench.mariadb

    def run(self) -> DrainResult:
        database = "bench_drain"
        self.monitor.drop(database)
        svc = ServiceProc(self.bench.reaper, self.bench.folder / "drain", self.mariadb.url(database), "normal",
                          self.args.workers)
        try:
            entries = self._fill_spool(svc)
            MysqlSink(SinkSettings(url=self.mariadb.url(database))).migrate()  # tables exist before the clock starts
            result = self._drain_alone(svc, database, sum(e[3] for e in entries))
            svc.stop()
            self.monitor.drop(database)
            result.executemany = self._direct("executemany", load_executemany, entries, result.checksum)
            result.load_data = self._direct("load_data", load_data_infile, entries, result.checksum)
        finally:
            svc.stop()
            self.monitor.drop(database)
        return result

    def _fill_spool(self, svc: ServiceProc) -> list[Entry]:
        rows = self.args.drain_rows
        logger.info("drain: filling a spool with %s task rows (ingest alone, no flusher)", f"{rows:,}")
        svc.start("ingest")
        svc.wait_ready(need_database=False)
        plans = self.bench.plans(svc.ingest_port, "f", 600.0, max_requests=rows // TASKS_PER_REQUEST)
        clients = self.bench.fill(plans)
        svc.stop()
        entries = read_spool(svc.spool)
        logger.info("drain: the spool holds %s entries, %s records (%s tasks; %s acknowledged), %.0f MB",
                    f"{len(entries):,}", f"{sum(e[3] for e in entries):,}",
                    f"{sum(e[3] for e in entries if e[1] == KIND_TASKS):,}",
                    f"{sum(c.rows_accepted for c in clients):,}", svc.spool.stat().st_size / 1e6)
        return entries

    def _drain_alone(self, svc: ServiceProc, database: str, rows: int) -> DrainResult:
        watch = SpoolWatch(svc.spool, interval=0.02)
        background = wait_quiet(self.args.wait_quiet, self.bench.our_pids())
        before = self.monitor.status()
        logger.info("drain: starting the flusher alone")
        launched = time.monotonic()
        svc.start("flusher")
        window = CpuWindow({"flusher": [svc.pid], "mariadbd": self.bench.our_pids()})
        window.start()
        watch.start()
        steady = self._wait_empty(svc, watch, launched + self.args.drain_timeout)
        window.stop()
        watch.stop()
        after = self.monitor.status()
        last = watch.last()
        assert last is not None
        first = next((s for s in watch.samples if s[2] > 0), None)
        done = last[1] == 0
        rate = ((last[2] - first[2]) / (last[0] - first[0]) if first and done and last[0] > first[0]
                else last[2] / max(1e-9, last[0] - launched))
        whole = statements(before, after, last[2], own_queries=2 if steady else 1)
        steady_stmts = statements(steady[0], after, last[2] - steady[1]) if steady else whole
        result = DrainResult(rows=rows, done=done, total_s=last[0] - launched,
                             first_batch_s=first[0] - launched if first else float("nan"), rows_s=rate,
                             stmts=whole, stmts_steady=steady_stmts, background=background, cpu=window.line(),
                             db_tasks=self.monitor.count(database, TASKS_TABLE),
                             checksum=self.monitor.checksum(database, TASKS_TABLE))
        logger.info("drain: flusher %s rows/s (%s in %.1f s from launch); CPU: %s", f"{rate:,.0f}",
                    "done" if done else "NOT done", result.total_s, result.cpu)
        return result

    def _wait_empty(self, svc: ServiceProc, watch: SpoolWatch, deadline: float) -> tuple[dict[str, int], int] | None:
        """Until the spool is empty; returns (status, rows written) taken right
        after the first batch, when the flusher's start-up statements are behind."""
        steady = None
        while time.monotonic() < deadline:
            sample = watch.last()
            if sample and sample[1] == 0:
                break
            if steady is None and sample and sample[2] > 0:
                status = self.monitor.status()
                now = watch.read()
                steady = (status, now[2] if now else sample[2])
            if svc.proc is not None and svc.proc.poll() is not None:
                raise RuntimeError(f"the flusher exited:\n{svc.tail()}")
            time.sleep(0.02)
        return steady

    def _direct(self, method: str, loader: Callable[..., int], entries: list[Entry], checksum: int) -> DirectResult:
        database = f"bench_direct_{method}"
        self.monitor.drop(database)
        MysqlSink(SinkSettings(url=self.mariadb.url(database))).migrate()
        logger.info("drain: direct load, %s", method)
        before = self.monitor.status()
        window = CpuWindow({"mariadbd": self.bench.our_pids()})
        window.start()
        cpu0, t0 = time.process_time(), time.monotonic()
        loaded = loader(self.mariadb, database, entries, self.bench.folder)
        seconds = time.monotonic() - t0
        window.stop({"benchmark process (decode, rows, SQL)": time.process_time() - cpu0})
        result = DirectResult(loaded, seconds, statements(before, self.monitor.status(), loaded), window.line(),
                              self.monitor.count(database, TASKS_TABLE),
                              self.monitor.checksum(database, TASKS_TABLE) == checksum)
        logger.info("drain: %s: %s rows/s; CPU: %s", method, f"{result.rows_s:,.0f}", result.cpu)
        self.monitor.drop(database)
        return result
