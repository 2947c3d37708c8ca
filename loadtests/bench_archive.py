"""Backup, restore and archive benchmark, on each sink (the embedded SQLite
and a new database on the shared MariaDB): loads N tasks (default 1,000,000
in 1,000 finished sessions) through the service's write path, then measures

- backup: seconds, MB/s of the tables' size, the backup's size vs the tables';
- restore of that backup into an empty database and spool (CLI): seconds, MB/s;
- archiving every task: rows/s, archive bytes per task, the hot tables'
  rows and size before and after;
- reading one archived session (1,000 tasks) back: p50/p95 ms.

    .venv/bin/python -m loadtests.bench_archive [--tasks 1000000] [--sink both|sqlite|mariadb] [--quick]

Loopback only, bounded in time; every process it starts is killed and the
temporary folder (and database) removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pymysql

from loadtests.bench_read import post_all
from loadtests.bench_service import HOST, Reaper, ServiceProc
from loadtests.loadgen import RawHttp

API = "/api/v1/translation"
BACKUPS = "/api/v1/system/backups"
MYSQL = dict(host="127.0.0.1", port=3306, user="root", password="")
TEXT = "Open the gate at dawn. 黎明时打开城门。"
EXTRA = """
[backup]
interval = 0.0
[archive]
after_days = 0.0
[files]
url = "file:///data/files"
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--per-session", type=int, default=1000)
    parser.add_argument("--sink", choices=("both", "sqlite", "mariadb"), default="both")
    parser.add_argument("--reads", type=int, default=200, help="archived sessions read back")
    parser.add_argument("--quick", action="store_true", help="100,000 tasks: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.reads = 100_000, 50
    return args


# -- load ----------------------------------------------------------------------

def bodies(tasks: int, per_session: int) -> tuple[list[str], list[bytes], list[bytes]]:
    """Finished sessions last updated 400 days ago, their tasks (100 per batch)."""
    rng = random.Random(11)
    old = "2025-10-01T12:00:00Z"
    ids = [f"a{i:06d}" for i in range(max(1, tasks // per_session))]
    sessions = [{"session_id": s, "filename": f"{s}.xlsx", "file_path": f"/games/{s}.xlsx",
                 "status": "completed" if n % 5 else "failed", "llm_provider": "openai", "total_tasks": per_session,
                 "completed_tasks": per_session, "game_info": {"game_name": "Bench", "build": n},
                 "updated_at": old} for n, s in enumerate(ids)]
    session_bodies = [msgspec.json.encode({"sessions": sessions[i:i + 1000]}) for i in range(0, len(sessions), 1000)]
    rows = []
    for n in range(tasks):
        sid = ids[n % len(ids)]
        rows.append({"task_id": f"t{n:07d}", "session_id": sid, "batch_id": f"b{n // 100}",
                     "sheet_name": f"Sheet{n % 3}", "row_index": n // len(ids), "column_name": "text",
                     "source_text": f"{TEXT} #{n}", "target_text": f"译文 {rng.randrange(10**6)}",
                     "status": "completed", "confidence": round(rng.random(), 4),
                     "duration_ms": 200 + n % 1000, "updated_at": old})
    task_bodies = [msgspec.json.encode({"tasks": rows[i:i + 100]}) for i in range(0, len(rows), 100)]
    return ids, session_bodies, task_bodies


# -- sizes ---------------------------------------------------------------------

def table_sizes(sink_url: str) -> dict[str, int]:
    """Rows and bytes of the hot tables (data + indexes; SQLite: the file's used pages)."""
    if sink_url.startswith("sqlite"):
        path = sink_url[len("sqlite:///"):]
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            rows = conn.execute("SELECT COUNT(*) FROM translation_tasks").fetchone()[0]
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE tbl_name IN"
                                                " ('translation_tasks', 'translation_sessions')")]
            used = conn.execute(f"SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name IN ({', '.join('?' * len(names))})",
                                names).fetchone()[0] if _has_dbstat(conn) else 0
        finally:
            conn.close()
        return {"tasks": rows, "bytes": used or (pages - free) * page, "file_bytes": pages * page,
                "free_bytes": free * page}
    database = sink_url.rsplit("/", 1)[1]
    conn = pymysql.connect(database=database, **MYSQL)  # type: ignore[arg-type]
    try:
        with conn.cursor() as cur:
            cur.execute("ANALYZE TABLE translation_tasks, translation_sessions")
            cur.fetchall()
            cur.execute("SELECT COUNT(*) FROM translation_tasks")
            rows = cur.fetchone()[0]
            cur.execute("SELECT SUM(data_length + index_length), SUM(data_free) FROM information_schema.tables"
                        " WHERE table_schema = %s AND table_name IN ('translation_tasks', 'translation_sessions')",
                        (database,))
            used, free = cur.fetchone()
    finally:
        conn.close()
    return {"tasks": rows, "bytes": int(used or 0), "file_bytes": int(used or 0) + int(free or 0),
            "free_bytes": int(free or 0)}


def _has_dbstat(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT 1 FROM dbstat LIMIT 1").fetchall()
        return True
    except sqlite3.OperationalError:
        return False


# -- steps -----------------------------------------------------------------------

def call(port: int, method: str, path: str, body: Any = None, timeout: float = 600) -> tuple[int, Any]:
    """One request; a 503 while the query process starts is retried for up to 30 s."""
    deadline = time.monotonic() + 30
    while True:
        status, answer = _call(port, method, path, body, timeout)
        if status != 503 or time.monotonic() > deadline:
            return status, answer
        time.sleep(0.2)


def _call(port: int, method: str, path: str, body: Any, timeout: float) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=payload, headers={"content-type": "application/json"})
        answer = conn.getresponse()
        data = answer.read()
        return answer.status, (json.loads(data) if data else None)
    finally:
        conn.close()


def backup(service: ServiceProc) -> tuple[float, dict]:
    started = time.perf_counter()
    status, body = call(service.ingest_port, "POST", BACKUPS)
    if status != 202:
        raise RuntimeError(f"backup: {status} {body}")
    backup_id = body["backup_id"]
    while True:
        status, body = call(service.ingest_port, "GET", f"{BACKUPS}/{backup_id}")
        if body["status"] != "running":
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if body["status"] != "completed":
        raise RuntimeError(f"backup failed: {body}")
    return elapsed, body


def restore(reaper: Reaper, folder: Path, sink_url: str, source: ServiceProc, backup_id: str) -> tuple[float, int]:
    """Into a new folder (spool) and database, reading the source's store; (seconds, tasks restored)."""
    target = ServiceProc(reaper, folder, sink_url, "full", 1)
    store = source.folder / "data" / "files"
    target.config.write_text(target.config.read_text() + EXTRA.replace("file:///data/files", f"file:///{store}"))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "core.cli", "--config", str(target.config), "backup", "restore",
                           backup_id], cwd=folder, capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"restore failed: {done.stdout}\n{done.stderr}")
    return elapsed, table_sizes(sink_url)["tasks"]


def archive_all(service: ServiceProc, tasks: int, timeout: float = 3600) -> tuple[float, dict]:
    started = time.perf_counter()
    status, body = call(service.ingest_port, "POST", f"{API}/archive/run", {"after_days": 30})
    if status not in (200, 202):
        raise RuntimeError(f"archive run: {status} {body}")
    while time.perf_counter() - started < timeout:  # the first run continues itself, 50,000 tasks at a time
        _, summary = call(service.ingest_port, "GET", f"{API}/archive")
        if sum(m["tasks"] for m in summary["sessions"]) >= tasks:
            return time.perf_counter() - started, summary
        time.sleep(0.1)
    raise RuntimeError("archiving did not finish in time")


def read_back(port: int, ids: list[str], reads: int) -> list[float]:
    rng = random.Random(3)
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    latencies = []
    for sid in rng.sample(ids, min(reads, len(ids))):
        started = time.perf_counter()
        conn.request("GET", f"{API}/archive/sessions/{sid}")
        answer = conn.getresponse()
        data = answer.read()
        latencies.append((time.perf_counter() - started) * 1000)
        if answer.status != 200:
            raise RuntimeError(f"read back {sid}: {answer.status} {data[:200]!r}")
    conn.close()
    return sorted(latencies)


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


# -- one sink ----------------------------------------------------------------------

def run_sink(kind: str, args: argparse.Namespace, reaper: Reaper, root: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {"sink": kind}
    databases = []
    if kind == "sqlite":
        source_url, target_url = f"sqlite:///{root / kind / 'sink.db'}", f"sqlite:///{root / (kind + '-restored') / 'sink.db'}"
    else:
        names = [f"bench_archive_{uuid.uuid4().hex[:8]}" for _ in range(2)]
        databases = names
        source_url, target_url = (f"mysql://root@127.0.0.1:3306/{n}" for n in names)
    try:
        service = ServiceProc(reaper, root / kind, source_url, "full", 2)
        service.config.write_text(service.config.read_text() + EXTRA)
        service.start()
        service.wait_ready(need_database=True)
        ids, session_bodies, task_bodies = bodies(args.tasks, args.per_session)
        started = time.perf_counter()
        post_all(service.ingest_port, f"{API}/sessions/batch", session_bodies)
        post_all(service.ingest_port, f"{API}/tasks/batch", task_bodies)
        if not service.flush_all(3600):
            raise RuntimeError("the load did not drain")
        figures["load_s"] = time.perf_counter() - started
        before = table_sizes(source_url)
        figures["before"] = before

        seconds, made = backup(service)
        figures["backup"] = {"s": seconds, "bytes": made["size_bytes"], "MB_per_s": before["bytes"] / seconds / 1e6,
                             "ratio": made["size_bytes"] / before["bytes"], "records": made["records"]}
        service.stop()
        seconds, restored = restore(reaper, root / (kind + "-restored"), target_url, service, made["backup_id"])
        figures["restore"] = {"s": seconds, "MB_per_s": before["bytes"] / seconds / 1e6, "tasks": restored}

        service.start()
        service.wait_ready(need_database=True)
        seconds, summary = archive_all(service, args.tasks)
        archived_bytes = sum(m["archived_bytes"] for m in summary["sessions"])
        figures["archive"] = {"s": seconds, "rows_per_s": args.tasks / seconds, "bytes": archived_bytes,
                              "bytes_per_task": archived_bytes / args.tasks}
        figures["after"] = table_sizes(source_url)
        latencies = read_back(service.ingest_port, ids, args.reads)
        figures["read_back"] = {"n": len(latencies), "p50_ms": statistics.median(latencies),
                                "p95_ms": pct(latencies, 0.95), "tasks_each": args.per_session}
        service.stop()
        return figures
    finally:
        if databases:
            conn = pymysql.connect(**MYSQL)  # type: ignore[arg-type]
            with conn.cursor() as cur:
                for name in databases:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            conn.close()


def report(all_figures: list[dict[str, Any]], tasks: int) -> None:
    print(f"\nbackup / restore / archive of {tasks:,} tasks")
    print(f"{'sink':8} {'load s':>7} {'tables MB':>10} {'backup s':>9} {'MB/s':>7} {'size':>7} {'restore s':>10}"
          f" {'MB/s':>7} {'archive s':>10} {'rows/s':>8} {'B/task':>7} {'read p50':>9} {'p95 ms':>7}")
    for f in all_figures:
        b, r, a, rb = f["backup"], f["restore"], f["archive"], f["read_back"]
        print(f"{f['sink']:8} {f['load_s']:7.1f} {f['before']['bytes'] / 1e6:10.1f} {b['s']:9.2f} {b['MB_per_s']:7.1f}"
              f" {b['ratio']:6.1%} {r['s']:10.2f} {r['MB_per_s']:7.1f} {a['s']:10.1f} {a['rows_per_s']:8.0f}"
              f" {a['bytes_per_task']:7.1f} {rb['p50_ms']:9.1f} {rb['p95_ms']:7.1f}")
    for f in all_figures:
        print(f"{f['sink']}: hot tasks {f['before']['tasks']:,} -> {f['after']['tasks']:,}; tables "
              f"{f['before']['bytes'] / 1e6:.1f} MB used -> {f['after']['bytes'] / 1e6:.1f} MB "
              f"(file {f['after']['file_bytes'] / 1e6:.1f} MB, {f['after']['free_bytes'] / 1e6:.1f} MB free for reuse);"
              f" restored {f['restore']['tasks']:,} tasks; backup records {f['backup']['records']}")
    print(json.dumps(all_figures, default=str))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["PS_SPOOL_MAX_LAG"] = "0"  # the load is sent as fast as it goes; no 429 by backlog time
    reaper = Reaper()
    root = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    reaper.folder = root
    try:
        kinds = ["sqlite", "mariadb"] if args.sink == "both" else [args.sink]
        all_figures = [run_sink(kind, args, reaper, root) for kind in kinds]
        report(all_figures, args.tasks)
        return 0
    finally:
        reaper.cleanup()


if __name__ == "__main__":
    sys.exit(main())
