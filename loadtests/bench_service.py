"""The processes a benchmark run starts, and how it stops them: the service
(or one role of it) in its own folder on free ports, the spool watched from
outside, and a Reaper that kills every process group it started and removes
the temporary folder, also on Ctrl-C or an exception."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from loadtests.loadgen import ClientPool, RawHttp
from testkit.mariadb import PrivateMariaDB

HOST = "127.0.0.1"
FLUSH_PATH = "/api/v1/translation/flush"

# Production flush settings (config.toml defaults); a spool large enough that
# no phase meets SPOOL_FULL.
CONFIG = """
[service]
shutdown_grace = 5.0
log_level = "info"
[ingest]
host = "{host}"
port = {ingest_port}
workers = {workers}
[query]
host = "{host}"
port = {query_port}
[spool]
path = "spool.db"
sync = "{sync}"
max_bytes = {max_bytes}
[flush]
batch_rows = 1000
max_delay = 1.0
[sink]
url = "{sink_url}"
"""
SPOOL_MAX_BYTES = 64 * 1024 ** 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Reaper:
    """Everything a run started, killed (whole process groups) at the end."""

    def __init__(self) -> None:
        self.groups: list[subprocess.Popen] = []
        self.pools: list[ClientPool] = []
        self.mariadb: PrivateMariaDB | None = None
        self.folder: Path | None = None  # removed at the end when set

    def popen(self, argv: list[str], cwd: Path, log_file: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """env: variables added to this process's environment."""
        with open(log_file, "ab") as out:
            proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, **env} if env else None)
        self.groups.append(proc)
        return proc

    @staticmethod
    def kill_group(proc: subprocess.Popen, term_timeout: float = 0.0) -> None:
        """SIGTERM (when term_timeout > 0) and wait, then SIGKILL the whole
        group: granian workers may outlive their leader."""
        if proc.poll() is None and term_timeout > 0:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(term_timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def cleanup(self) -> None:
        for pool in self.pools:
            with contextlib.suppress(Exception):
                pool.kill()
        for proc in self.groups:
            with contextlib.suppress(Exception):
                self.kill_group(proc)
        if self.mariadb is not None:
            with contextlib.suppress(Exception):
                self.mariadb.kill()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class ServiceProc:
    """persistence-service (`run`, or one role) in its own folder, on free ports."""

    def __init__(self, reaper: Reaper, folder: Path, sink_url: str, sync: str, workers: int,
                 env: dict[str, str] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.reaper = reaper
        self.env = env or {}  # e.g. PS_FLUSH_WRITERS: overrides the config file (core/settings.py)
        self.folder = folder
        self.ingest_port = free_port()
        self.query_port = free_port()
        self.config = folder / "config.toml"
        self.config.write_text(CONFIG.format(host=HOST, ingest_port=self.ingest_port, query_port=self.query_port,
                                             workers=workers, sync=sync, max_bytes=SPOOL_MAX_BYTES,
                                             sink_url=sink_url))
        self.log = folder / "service.log"
        self.proc: subprocess.Popen | None = None

    @property
    def spool(self) -> Path:
        return self.folder / "spool.db"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, command: str = "run") -> None:
        self.proc = self.reaper.popen([sys.executable, "-m", "core.cli", "--config", str(self.config), command],
                                      cwd=self.folder, log_file=self.log, env=self.env)

    def health(self) -> dict[str, Any]:
        return msgspec.json.decode(RawHttp(HOST, self.ingest_port, timeout=30).call("GET", "/health")[1])

    def wait_ready(self, need_database: bool, timeout: float = 60) -> None:
        """Until /health answers (and, with need_database, the flusher reports the database healthy)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the service exited ({self.proc.returncode}):\n{self.tail()}")
            with contextlib.suppress(OSError, ValueError, msgspec.DecodeError):
                if self.health().get("database") == "healthy" or not need_database:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the service did not get ready within {timeout} s:\n{self.tail()}")

    def flush_all(self, timeout: float) -> bool:
        """POST /flush until it answers 200 (each call waits at most flush_timeout)."""
        started = time.monotonic()
        conn = RawHttp(HOST, self.ingest_port, timeout=60)
        while time.monotonic() - started < timeout:
            status, body = conn.call("POST", FLUSH_PATH)
            if status == 200:
                return True
            if status != 503:
                raise RuntimeError(f"/flush answered {status}: {body[:300]!r}")
        return False

    def stop(self, timeout: float = 30) -> None:
        if self.proc is not None:
            self.reaper.kill_group(self.proc, term_timeout=timeout)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class SpoolWatch:
    """Polls the spool's own counters (read-only, from outside the service) in
    a thread: samples of (time, records waiting, records written to the sink
    so far)."""

    def __init__(self, path: Path, interval: float = 0.2) -> None:
        self.path = path
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def read(self) -> tuple[float, int, int] | None:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5,
                                                 check_same_thread=False)
                waiting, written = self._conn.execute(
                    "SELECT live_sessions + live_tasks, sessions_written + tasks_written FROM state").fetchone()
            except sqlite3.Error:
                return None
        return time.monotonic(), int(waiting), int(written)

    def start(self) -> SpoolWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def at(self, when: float) -> tuple[float, int, int] | None:
        """The sample closest to `when`."""
        return min(self.samples, key=lambda s: abs(s[0] - when)) if self.samples else None

    def last(self) -> tuple[float, int, int] | None:
        return self.samples[-1] if self.samples else None

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = self.read()
            if sample:
                self.samples.append(sample)
            self._stop.wait(self.interval)
