"""Test harness: start the real `persistence-service run` on free ports with
its own config file, talk to it over HTTP, read the sink directly."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pymysql

from testkit.procs import cmdline, descendants
from wal.types import SpoolError

MYSQL_HOST = "127.0.0.1"
MYSQL_PORT = 3306
SESSIONS = "/api/v1/translation/sessions/batch"
TASKS = "/api/v1/translation/tasks/batch"
FLUSH = "/api/v1/translation/flush"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll check() until it returns something truthy; fail after timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, OSError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


CONFIG = """
[service]
shutdown_grace = {shutdown_grace}
health_check_interval = 0.2
log_level = "info"
[ingest]
host = "{host}"
port = {ingest_port}
workers = {workers}
max_body_bytes = {max_body_bytes}
body_timeout = {body_timeout}
flush_timeout = {flush_timeout}
[query]
host = "{host}"
port = {query_port}
workers = {query_workers}
stats_cache = {stats_cache}
[spool]
path = "spool.db"
sync = "{sync}"
max_bytes = {spool_max_bytes}
max_lag = {max_lag}
[flush]
batch_rows = {batch_rows}
max_delay = {max_delay}
orphan_grace = {orphan_grace}
stall_after = {stall_after}
nice = {flush_nice}
retry_initial = 0.05
retry_max = 0.5
[sink]
url = "{sink_url}"
connect_timeout = 2.0
[backup]
interval = {backup_interval}
keep = {backup_keep}
[retention]
interval = {retention_interval}
{extra_toml}
"""

DEFAULTS: dict[str, Any] = dict(shutdown_grace=20.0, workers=2, max_body_bytes=8 * 1024 * 1024,
                                flush_timeout=10.0, sync="full", spool_max_bytes=64 * 1024 * 1024,
                                batch_rows=1000, max_delay=0.2, orphan_grace=600.0, retention_interval=3600.0,
                                body_timeout=30.0, extra_toml="", stats_cache=0.0, stall_after=30.0, max_lag=30.0,
                                flush_nice=10, query_workers=0, backup_interval=0.0, backup_keep=7, host="127.0.0.1")


class Service:
    """One `persistence-service run` in its own folder, on free ports."""

    def __init__(self, folder: Path, sink_url: str, **overrides: Any) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.sink_url = sink_url
        self.ingest_port = free_port()
        self.query_port = free_port()
        options = {**DEFAULTS, **overrides}
        self.host = options["host"]  # any 127.x.y.z: several nodes on one machine, each on its own address
        self.config = folder / "config.toml"
        self.config.write_text(CONFIG.format(ingest_port=self.ingest_port, query_port=self.query_port,
                                             sink_url=sink_url, **options))
        self.log = folder / "service.log"
        self.env: dict[str, str] = {}  # added to the environment of every process of the service
        self.proc: subprocess.Popen | None = None
        self.http = httpx.Client(base_url=f"http://{self.host}:{self.ingest_port}", timeout=30)

    @property
    def spool_path(self) -> Path:
        return self.folder / "spool.db"

    def start(self, wait: bool = True) -> None:
        """Start the service; again after kill() too (same folder, same ports)."""
        if self.http.is_closed:
            self.http = httpx.Client(base_url=f"http://{self.host}:{self.ingest_port}", timeout=30)
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "--config", str(self.config), "run"],
            cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **self.env})
        log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"service exited:\n{self.tail()}"
            query = self.http.get(f"http://{self.host}:{self.query_port}/health")
            return self.http.get("/health").status_code in (200, 503) and query.status_code in (200, 503)
        wait_for(ready, timeout, "the service to answer /health")

    def post(self, path: str, body: Any, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, json=body, **kwargs)

    def post_sessions(self, sessions: list[dict]) -> httpx.Response:
        return self.post(SESSIONS, {"sessions": sessions})

    def post_tasks(self, tasks: list[dict]) -> httpx.Response:
        return self.post(TASKS, {"tasks": tasks})

    def flush(self) -> httpx.Response:
        return self.http.post(FLUSH)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM the supervisor and wait for it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Kill every process of the service (the whole process group)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        else:
            _kill_group_leftovers(self.proc)
        self.http.close()

    def children(self) -> dict[str, list[int]]:
        """pid lists by role, read from /proc (flusher, ingest, query)."""
        assert self.proc is not None
        roles: dict[str, list[int]] = {"flusher": [], "ingest": [], "query": []}
        for pid in descendants(self.proc.pid):
            cmd = cmdline(pid)
            if "flusher" in cmd:
                roles["flusher"].append(pid)
            elif "ingest.app" in cmd:
                roles["ingest"].append(pid)
            elif "query.app" in cmd:
                roles["query"].append(pid)
        return roles

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _kill_group_leftovers(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -- reading the sink directly, as an operator would -------------------------

def sink_rows(sink_url: str, table: str, columns: str = "*") -> list[dict[str, Any]]:
    """Every row of a sink table as dicts (keys are column names)."""
    sql = f"SELECT {columns} FROM {table}"
    url = urlsplit(sink_url)
    if url.scheme == "sqlite":
        conn = sqlite3.connect(sink_url[len("sqlite:///"):])
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql)]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            conn.close()
    conn = pymysql.connect(host=url.hostname, port=url.port or 3306, user=url.username or "root",
                           password=url.password or "", database=url.path.strip("/"),
                           cursorclass=pymysql.cursors.DictCursor, charset="utf8mb4")
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def appended(results: list[int | SpoolError]) -> list[int]:
    """The seqs of Spool.append_many's results; an item refused fails the test."""
    seqs = [r for r in results if isinstance(r, int)]
    assert len(seqs) == len(results), results
    return seqs


# -- records -----------------------------------------------------------------

def session(session_id: str, **fields: Any) -> dict[str, Any]:
    return {"session_id": session_id, "filename": "game.xlsx", "file_path": "/data/game.xlsx",
            "status": "processing", "llm_provider": "openai", **fields}


def task(task_id: str, session_id: str, **fields: Any) -> dict[str, Any]:
    return {"task_id": task_id, "session_id": session_id, "batch_id": "b1", "sheet_name": "Sheet1",
            "row_index": 1, "column_name": "B", "source_text": "你好, world", "status": "pending",
            **fields}
