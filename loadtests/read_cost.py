"""CPU per read, by process: where the time of one read goes (ingest relay,
query process, MariaDB, the client), measured from /proc over sequential
requests, through port 8001 and straight to 8002. On 2 cores the read rate
is bounded by the sum, so this says which part to make cheaper.

    cd /work/main && .venv/bin/python -m loadtests.read_cost [--tasks 100000] [--requests 500]

Bounded in time, loopback only; every process it starts is killed and the
temporary folder removed at the end.
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pymysql

from loadtests.bench_read import API, RESTORE_SESSION, mixed, plan_requests, post_all
from loadtests.bench_service import Reaper, ServiceProc
from loadtests.loadgen import RawHttp
from testkit.mariadb import PrivateMariaDB
from loadtests.procstat import proc_cpu_s, roles_of
from plugins.tables import TASK_TABLE
from plugins.mysql_reader import AVERAGE_SESSION_S, CONVERSIONS, DATABASE_BYTES
from plugins.read_sql import ReadSql
from plugins.reader import (AVERAGE_TASK_MS, SESSION_STATUS_COUNTS, TASK_STATUS_COUNTS, PageRequest, SessionFilter,
                            TaskFilter)

HOST = "127.0.0.1"
JSON_ROWS = msgspec.json.Decoder(list[tuple])  # as plugins.mysql_reader decodes JSON_ARRAY rows
MIX = ("session list", "session detail", "session tasks page", "single task")  # as bench_read's 32-client run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--restore-tasks", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=500, help="sequential requests per endpoint and port")
    parser.add_argument("--mix-seconds", type=float, default=10.0, help="mixed reads, 32 clients, through 8001")
    parser.add_argument("--keep-running", type=float, default=0, help="seconds to keep the service up at the end")
    return parser.parse_args(argv)


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_by_role(service: ServiceProc, mariadb: PrivateMariaDB) -> dict[str, float]:
    out: dict[str, float] = {"client": _self_cpu()}
    for role, pids in roles_of(service.pid).items():
        if role in ("ingest worker", "query worker"):
            out[role.split()[0]] = sum(proc_cpu_s(pid) for pid in pids)
    assert mariadb.proc is not None
    out["mariadb"] = proc_cpu_s(mariadb.proc.pid)
    return out


def measure(service: ServiceProc, mariadb: PrivateMariaDB, port: int, paths: list[str]) -> tuple[dict, float]:
    http = RawHttp(HOST, port)
    http.call("GET", paths[0])
    before = _cpu_by_role(service, mariadb)
    started = time.perf_counter()
    for path in paths:
        status, body = http.call("GET", path)
        if status != 200:
            raise RuntimeError(f"{path}: {status} {body[:200]!r}")
    wall = time.perf_counter() - started
    after = _cpu_by_role(service, mariadb)
    per = {k: (after[k] - before[k]) * 1000 / len(paths) for k in after}
    return per, wall * 1000 / len(paths)


def _connect(url: str) -> pymysql.connections.Connection:
    parts = urlsplit(url)
    return pymysql.connect(host=parts.hostname, port=parts.port, user="root", database=parts.path.strip("/"),
                           charset="utf8mb4", conv=CONVERSIONS, autocommit=True)


def _median_ms(cur: Any, sql: str, params: list, repeats: int, decode: Callable[[list], Any]) -> tuple[float, float]:
    """(wall ms, this process's CPU ms) per run of sql, fetched and decoded; medians."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        cur.execute(sql, params)
        decode(cur.fetchall())
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return sorted(walls)[repeats // 2], sorted(cpus)[repeats // 2]


def print_statement_forms(url: str, session_id: str, repeats: int = 200) -> None:
    """The choices of plugins/read_sql.py, each against its alternative: task
    rows as one JSON array each or as 18 columns; a page's rows read directly
    or through a deferred join (keys first, then rows)."""
    json_sql, plain_sql = ReadSql("%s", deferred_join=True, json_rows=True), ReadSql("%s", deferred_join=True)
    page = TaskFilter(session_id=session_id, by_layout=True)
    columns = ", ".join(f"t.{c}" for c in TASK_TABLE.columns)
    order = "ORDER BY t.sheet_name, t.row_index, t.column_name, t.task_id"
    deferred_first = (f"SELECT JSON_ARRAY({columns}) FROM (SELECT task_id FROM translation_tasks WHERE session_id = %s"
                      f" {order.replace('t.', '')} LIMIT %s) k JOIN translation_tasks t ON t.task_id = k.task_id {order}")
    sessions = SessionFilter()
    offset_page = PageRequest(limit=20, offset=500)
    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            cases = [
                ("50-task page, 18 columns per row", *plain_sql.tasks(page, PageRequest(limit=50)), list),
                ("50-task page, one JSON array per row (as run)", *json_sql.tasks(page, PageRequest(limit=50)),
                 lambda rows: JSON_ROWS.decode("[" + ",".join(r[0] for r in rows) + "]")),
                ("50-task first page, direct (as run)", *json_sql.tasks(page, PageRequest(limit=50)), list),
                ("50-task first page, deferred join", deferred_first, [session_id, 51], list),
                ("sessions page 26 by OFFSET, deferred (as run)", *json_sql.sessions(sessions, offset_page), list),
                ("sessions page 26 by OFFSET, direct",
                 *ReadSql("%s", json_rows=True).sessions(sessions, offset_page), list),
            ]
            print(f"statement forms, median of {repeats} runs (MariaDB wall ms, client CPU ms):")
            for name, sql, params, decode in cases:
                wall, cpu = _median_ms(cur, sql, params, repeats, decode)
                print(f"  {name:<48}{wall:>7.2f} ms wall{cpu:>7.2f} ms CPU")
    finally:
        conn.close()


def print_stats_costs(url: str, repeats: int = 5) -> None:
    """What each statement behind GET /stats costs on this database (median of repeats)."""
    conn = _connect(url)
    try:
        print("GET /stats statements, median of", repeats, "runs:")
        with conn.cursor() as cur:
            for name, sql in (("sessions by status", SESSION_STATUS_COUNTS), ("tasks by status", TASK_STATUS_COUNTS),
                              ("average session time", AVERAGE_SESSION_S), ("average task time", AVERAGE_TASK_MS),
                              ("database size", DATABASE_BYTES)):
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    cur.execute(sql)
                    cur.fetchall()
                    times.append((time.perf_counter() - started) * 1000)
                print(f"  {name:<24}{sorted(times)[repeats // 2]:>9.1f} ms   {sql[:90]}")
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reaper = Reaper()
    folder = Path(tempfile.mkdtemp(prefix="read_cost_"))
    reaper.folder = folder
    try:
        mariadb = PrivateMariaDB(folder / "mariadb")
        reaper.mariadb = mariadb
        mariadb.start()
        service = ServiceProc(reaper, folder / "svc", mariadb.url("read_cost"), sync="normal", workers=2)
        service.start()
        service.wait_ready(need_database=True)
        ids, session_bodies, task_bodies = plan_requests(args)
        post_all(service.ingest_port, f"{API}/sessions/batch", session_bodies)
        post_all(service.ingest_port, f"{API}/tasks/batch", task_bodies)
        if not service.flush_all(timeout=600):
            raise RuntimeError("the database did not catch up")
        rng = random.Random(3)
        n = args.requests
        others = args.tasks - args.restore_tasks
        endpoints = {
            "session list": [f"{API}/sessions?page={rng.randint(1, 50)}&page_size=20" for _ in range(n)],
            "session detail": [f"{API}/sessions/{rng.choice(ids)}" for _ in range(n)],
            "session tasks page": [f"{API}/sessions/{rng.choice(ids[1:])}/tasks?page_size=50" for _ in range(n)],
            "single task": [f"{API}/tasks/t-{rng.randrange(others)}" for _ in range(n)],
            "/tasks page 100": [f"{API}/tasks?page_size=100" for _ in range(n)],
            "/health": ["/health"] * n,
        }
        print(f"CPU ms per read ({n} sequential requests each; {len(ids):,} sessions, {args.tasks:,} tasks, "
              f"restore session {RESTORE_SESSION})")
        print(f"{'read':<22}{'port':>6}{'wall':>8}{'ingest':>8}{'query':>8}{'mariadb':>9}{'client':>8}{'sum':>8}")
        for name, paths in endpoints.items():
            for label, port in (("8001", service.ingest_port), ("8002", service.query_port)):
                per, wall = measure(service, mariadb, port, paths)
                total = sum(per.values())
                print(f"{name:<22}{label:>6}{wall:>8.2f}{per.get('ingest', 0):>8.2f}{per.get('query', 0):>8.2f}"
                      f"{per['mariadb']:>9.2f}{per['client']:>8.2f}{total:>8.2f}")
        print_stats_costs(mariadb.url("read_cost"))
        print_statement_forms(mariadb.url("read_cost"), ids[1])
        if args.mix_seconds:
            def mix_path(r: random.Random) -> str:
                return r.choice([paths for name, paths in endpoints.items() if name in MIX])[r.randrange(n)]
            before = _cpu_by_role(service, mariadb)
            count, per_s = mixed(service.ingest_port, mix_path, 32, args.mix_seconds)
            after = _cpu_by_role(service, mariadb)
            cpu = "  ".join(f"{k} {(after[k] - before[k]) * 1000 / max(count, 1):.2f}" for k in after)
            print(f"mixed ({', '.join(MIX)}), 32 clients via 8001, {args.mix_seconds:.0f} s: {per_s:,.0f} reads/s;"
                  f" CPU ms per read: {cpu}")
        if args.keep_running:
            print(f"service on {service.ingest_port} / {service.query_port} for {args.keep_running:.0f} s", flush=True)
            time.sleep(args.keep_running)
        return 0
    finally:
        reaper.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
