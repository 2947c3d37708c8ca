"""The write benchmark's results and how they are printed: one table per
comparison, per-phase details (latency, CPU by process, drain, statements)
and the targets with PASS/FAIL."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import platform
from importlib.metadata import version
from pathlib import Path

from msgspec import Struct

from loadtests.dbstatus import Statements

ROOT = Path(__file__).resolve().parent.parent

TARGET_INGEST_ROWS_S = 50_000
TARGET_P99_MS = 10.0
TARGET_FULL_VS_NORMAL = 2.0
TARGET_FULL_VS_CEILING = 0.5
TARGET_DRAIN_VS_DIRECT = 0.7
TARGET_STATEMENTS_PER_1000 = 2.0
BATCH_ROWS = 1000  # flush.batch_rows in every phase
NAN = float("nan")


class LoadResult(Struct):
    """One load phase: (a), (b), (d) against the service, (c) against the validate-only app."""
    name: str
    label: str
    duration: float
    requests: int = 0
    rows_accepted_window: int = 0  # acknowledged inside [start, start + duration]
    rows_accepted_total: int = 0  # every 202, including answers just after the window
    sessions_posted: int = 0
    rows_per_s: float = 0.0
    p50_ms: float = NAN
    p90_ms: float = NAN
    p99_ms: float = NAN
    p999_ms: float = NAN
    max_ms: float = NAN
    statuses: dict[str, int] = {}
    errors: list[str] = []
    target_rate_rows_s: float = 0.0  # open loop only
    late_ms_max: float = 0.0
    background: str = ""
    cpu: str = ""
    # service phases only
    backlog_at_stop: int = -1
    lag_s: float = NAN
    flushed: bool = False
    drain_rows_s: float = NAN
    drain_during_load_rows_s: float = NAN
    drain_after_load_rows_s: float = NAN
    drain_cpu: str = ""
    db_tasks: int = -1
    stmts: Statements | None = None


class DirectResult(Struct):
    rows: int
    seconds: float
    stmts: Statements
    cpu: str
    db_tasks: int
    same_content: bool  # CHECKSUM TABLE equals the flusher's table

    @property
    def rows_s(self) -> float:
        return self.rows / self.seconds


class DrainResult(Struct):
    rows: int  # records in the pre-filled spool
    done: bool
    total_s: float  # flusher launch until the spool was empty
    first_batch_s: float
    rows_s: float  # from the first committed batch until empty
    stmts: Statements
    stmts_steady: Statements  # from after the first batch
    background: str
    cpu: str
    db_tasks: int
    checksum: int = 0
    executemany: DirectResult | None = None
    load_data: DirectResult | None = None

    @property
    def fastest_direct(self) -> float:
        return max(d.rows_s for d in (self.executemany, self.load_data) if d is not None)


class RunInfo(Struct):
    machine: list[str]
    mariadb: str
    load: str


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "n/a" if value is None or value != value else format(value, spec)


def machine_lines() -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    mem_gb = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 ** 2
    versions = ", ".join(f"{m} {version(m)}" for m in ("granian", "starlette", "msgspec", "pymysql"))
    digest = hashlib.sha256()
    for folder in ("core", "ingest", "wal", "flusher", "plugins"):
        for file in sorted((ROOT / folder).glob("*.py")):
            digest.update(file.name.encode() + file.read_bytes())
    load = os.getloadavg()
    return [f"machine: {os.cpu_count()} x {cpu}, {mem_gb:.0f} GB RAM, Linux {platform.release()},"
            f" Python {platform.python_version()}",
            f"versions: {versions}; service code sha256 {digest.hexdigest()[:12]}"
            " (core ingest wal flusher plugins *.py)",
            f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"]


def _phase_row(r: LoadResult) -> str:
    service = r.stmts is not None
    title = f"({r.name}) {r.label}"
    return (f"{title[:43]:<44}{fmt(r.rows_per_s):>12}{fmt(r.p50_ms, '.1f'):>8}{fmt(r.p99_ms, '.1f'):>8}"
            f"{fmt(r.p999_ms, '.1f'):>8}{fmt(r.max_ms, '.1f'):>8}"
            f"{fmt(r.backlog_at_stop, ',') if service else '-':>13}{fmt(r.lag_s, '.1f') if service else '-':>7}"
            f"{fmt(r.drain_rows_s) if service else '-':>10}{fmt(r.stmts.per_1000, '.2f') if r.stmts else '-':>8}")


def phase_table(phases: list[LoadResult]) -> list[str]:
    head = (f"{'phase':<44}{'rows/s acc.':>12}{'p50 ms':>8}{'p99 ms':>8}{'p99.9':>8}{'max ms':>8}"
            f"{'backlog@stop':>13}{'lag s':>7}{'drain r/s':>10}{'stmt/1k':>8}")
    return [head, *map(_phase_row, phases)]


def phase_details(r: LoadResult) -> list[str]:
    scheduled = (f", scheduled {r.target_rate_rows_s:,.0f} rows/s, latest send {r.late_ms_max:.1f} ms behind schedule"
                 if r.target_rate_rows_s else "")
    lines = [f"({r.name}) {r.label}",
             f"    requests {r.requests:,} ({r.rows_accepted_window:,} rows acknowledged inside the window,"
             f" {r.rows_accepted_total:,} in all), answers {r.statuses}{scheduled}",
             f"    ack latency ms: p50 {fmt(r.p50_ms, '.2f')}  p90 {fmt(r.p90_ms, '.2f')}  p99 {fmt(r.p99_ms, '.2f')}"
             f"  p99.9 {fmt(r.p999_ms, '.2f')}  max {fmt(r.max_ms, '.2f')}",
             f"    other jobs on the machine just before (2 s): {r.background}",
             f"    CPU during load (% of one core): {r.cpu}"]
    if r.stmts is not None:
        s = r.stmts
        lines += [f"    drain: {fmt(r.drain_rows_s)} rows/s from load start until /flush answered 200"
                  f" ({fmt(r.drain_during_load_rows_s)} rows/s while loading, {fmt(r.drain_after_load_rows_s)} after);"
                  f" the spool held {r.backlog_at_stop:,} records at stop, flushed {fmt(r.lag_s, '.1f')} s later"
                  + ("" if r.flushed else " (NOT flushed within the time limit)"),
                  f"    CPU while flushing the backlog: {r.drain_cpu}",
                  f"    MariaDB: {s.questions:,} statements for {s.rows:,} rows = {s.per_1000:.2f} per 1000 rows"
                  f" ({s.breakdown()}); translation_tasks holds {r.db_tasks:,} rows (acknowledged:"
                  f" {r.rows_accepted_total:,})"]
    if r.errors:
        lines.append(f"    first errors: {r.errors}")
    return lines


def drain_section(d: DrainResult) -> list[str]:
    assert d.executemany is not None and d.load_data is not None
    fastest = d.fastest_direct
    rows = [("service flusher alone, pre-filled spool -> MariaDB", d.rows_s, d.stmts_steady),
            ("direct (1): pymysql executemany of plugins.mysql upsert", d.executemany.rows_s, d.executemany.stmts),
            ("direct (2): LOAD DATA LOCAL INFILE + INSERT..SELECT..ON DUP", d.load_data.rows_s, d.load_data.stmts)]
    lines = [f"drain comparison: the same {d.rows:,} spooled records, batches of whole entries up to 1000 records,"
             " one transaction each, fresh database each",
             f"{'method':<62}{'rows/s':>10}{'stmt/1k':>9}{'vs fastest direct':>19}"]
    lines += [f"{title:<62}{fmt(rate):>10}{st.per_1000:>9.2f}{100 * rate / fastest:>18.0f}%"
              for title, rate, st in rows]
    st, steady = d.stmts, d.stmts_steady
    lines += [f"    other jobs on the machine just before (2 s): {d.background}",
              f"    flusher: {'drained' if d.done else 'NOT drained'} in {d.total_s:.1f} s from launch (first batch"
              f" committed {fmt(d.first_batch_s, '.2f')} s after launch); CPU: {d.cpu}",
              f"    flusher statements: whole drain {st.questions:,} for {st.rows:,} rows = {st.per_1000:.3f} per 1000"
              f" ({st.breakdown()}); after the first batch {steady.questions:,} for {steady.rows:,} rows ="
              f" {steady.per_1000:.3f} per 1000 ({steady.breakdown()}); table holds {d.db_tasks:,} tasks"]
    for name, r in (("direct (1)", d.executemany), ("direct (2)", d.load_data)):
        same = "the same content as" if r.same_content else "NOT the same content as"
        lines.append(f"    {name}: {r.rows:,} rows in {r.seconds:.1f} s; statements per 1000 rows"
                     f" {r.stmts.breakdown()}; CPU: {r.cpu}; table holds {r.db_tasks:,} tasks, {same} the"
                     " flusher's (CHECKSUM TABLE)")
    return lines


def _target(title: str, value: str, ok: bool) -> str:
    return f"  [{'PASS' if ok else 'FAIL'}] {title:<62} {value}"


def targets(phases: dict[str, LoadResult], drain: DrainResult | None) -> list[str]:
    a, b, c, d = (phases.get(k) for k in "abcd")
    lines = ["targets"]
    if a:
        lines.append(_target(f"ingest >= {TARGET_INGEST_ROWS_S:,} rows/s accepted with sync=full",
                             f"{a.rows_per_s:,.0f} rows/s", a.rows_per_s >= TARGET_INGEST_ROWS_S))
    if d:
        lines.append(_target(f"p99 ack < {TARGET_P99_MS:g} ms at half of (a)'s rate",
                             f"{d.p99_ms:.1f} ms at {d.rows_per_s:,.0f} rows/s", d.p99_ms < TARGET_P99_MS))
    if a and b:
        ratio = b.rows_per_s / a.rows_per_s if a.rows_per_s else float("inf")
        lines.append(_target(f"full costs at most {TARGET_FULL_VS_NORMAL:g}x vs normal (normal rows/s / full rows/s)",
                             f"{ratio:.2f}x", ratio <= TARGET_FULL_VS_NORMAL))
    if a and c:
        share = a.rows_per_s / c.rows_per_s if c.rows_per_s else 0.0
        lines.append(_target(f"stretch: full >= {TARGET_FULL_VS_CEILING:.0%} of the validate-only ceiling",
                             f"{share:.0%}", share >= TARGET_FULL_VS_CEILING))
    if drain and drain.executemany and drain.load_data:
        share = drain.rows_s / drain.fastest_direct
        lines.append(_target(f"drain >= {TARGET_DRAIN_VS_DIRECT:.0%} of the fastest direct method", f"{share:.0%}",
                             share >= TARGET_DRAIN_VS_DIRECT))
        steady, whole = drain.stmts_steady, drain.stmts
        batches = math.ceil(steady.rows / BATCH_ROWS)  # the last batch of a finite drain is partial
        lines.append(_target(f"<= {TARGET_STATEMENTS_PER_1000:g} statements per 1000-row batch"
                             " (pure drain, after 1st batch)",
                             f"{steady.questions:,} statements for {steady.rows:,} rows (>= {batches} batches):"
                             f" {steady.per_1000:.3f} per 1000 rows; whole drain with start-up {whole.per_1000:.3f}",
                             steady.questions <= TARGET_STATEMENTS_PER_1000 * batches))
    return lines


def report(info: RunInfo, phases: dict[str, LoadResult], drain: DrainResult | None) -> str:
    rule = "=" * 110
    lines = ["", rule, "persistence-service write benchmark (loadtests/bench_write.py)", rule,
             *info.machine, info.mariadb, info.load, ""]
    ordered = [phases[k] for k in "abcd" if k in phases]
    if ordered:
        lines += [*phase_table(ordered), ""]
        for r in ordered:
            lines += phase_details(r)
        lines.append("")
    if drain and drain.executemany and drain.load_data:
        lines += [*drain_section(drain), ""]
    return "\n".join(lines + targets(phases, drain))
