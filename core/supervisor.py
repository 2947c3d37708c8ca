"""`persistence-service run`: start the ingest server (granian, N workers),
the flusher and the query server as child processes, restart a child that
dies, and on SIGTERM/SIGINT stop in order: ingest first (no new writes), then
the flusher (drains for up to shutdown_grace), then the query server.

Children are fresh interpreters (fork + exec), so no SQLite connection ever
crosses a fork. Signal handlers only set a flag.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from prometheus_client.multiprocess import mark_process_dead

from core.metrics import MULTIPROC_ENV
from core.settings import Settings

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
ORPHAN_STOP_S = 10.0
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
EXIT_FATAL = 78  # a child that exits with this cannot start (bad config, unusable spool)
STOP_TIMEOUT_S = 30.0
FATAL_STOP_TIMEOUT_S = 5.0  # a child cannot run: nothing to wait for
RESTART_WINDOW_S = 60.0
MAX_RESTARTS_IN_WINDOW = 10


def role_command(role: str, settings: Settings) -> list[str]:
    """The argv that starts one role in the foreground."""
    if role == "flusher":
        return [sys.executable, "-m", "flusher"]
    if role == "ingest":
        return _granian("ingest.app:create_app", settings.ingest.host, settings.ingest.port,
                        settings.ingest.worker_count)
    if role == "query":
        return _granian("query.app:create_app", settings.query.host, settings.query.port,
                        settings.query.worker_count)
    raise ValueError(f"unknown role {role!r}")


def _granian(target: str, host: str, port: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--no-ws", "--loop", "uvloop",
            "--host", host, "--port", str(port), "--workers", str(workers),
            "--respawn-failed-workers", "--log-level", "warning", target]


class Child:
    def __init__(self, role: str, argv: list[str]) -> None:
        self.role = role
        self.argv = argv
        self.proc: subprocess.Popen | None = None
        self.starts: list[float] = []

    def start(self, env: dict[str, str]) -> None:
        self.starts = [t for t in self.starts if time.monotonic() - t < RESTART_WINDOW_S]
        self.starts.append(time.monotonic())
        self.proc = subprocess.Popen(self.argv, env=env, preexec_fn=_die_with_parent)
        logger.info("started %s (pid %d)", self.role, self.proc.pid)

    def is_crash_looping(self) -> bool:
        return len(self.starts) >= MAX_RESTARTS_IN_WINDOW

    def stop(self, timeout: float) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.error("%s did not stop within %.0f s; killing it", self.role, timeout)
            self.proc.kill()
            return self.proc.wait()


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stop = threading.Event()
        # Start order; stop order is ingest, flusher, query.
        self._children = {role: Child(role, role_command(role, settings))
                          for role in ("flusher", "query", "ingest")}
        self._env: dict[str, str] = {}

    def run(self) -> int:
        warn_if_exposed(self._settings)
        # Orphans of a dead child (granian's workers when its main process is
        # killed) become our children, so we can stop them: left alone they
        # would keep serving the port (SO_REUSEPORT) outside our control.
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        # Samples of a previous run would be added to this one's.
        shutil.rmtree(self._settings.service.metrics_dir, ignore_errors=True)
        self._env = metrics_env(self._settings)
        for child in self._children.values():
            child.start(self._env)
        code = 0
        while not self._stop.wait(self._settings.service.health_check_interval):
            code = self._check_children()
            self._stop_orphans()
            if code:
                break
        self._shutdown(STOP_TIMEOUT_S if code == 0 else FATAL_STOP_TIMEOUT_S)
        self._stop_orphans()
        return code

    def _stop_orphans(self) -> None:
        tracked = {c.proc.pid for c in self._children.values() if c.proc is not None}
        orphans = [pid for pid in _own_children() if pid not in tracked]
        for pid in orphans:
            logger.warning("stopping orphaned process %d (its parent, one of our children, died)", pid)
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + ORPHAN_STOP_S
        for pid in orphans:
            while not _reaped(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _reaped(pid):
                _signal(pid, signal.SIGKILL)
                os.waitpid(pid, 0)

    def _check_children(self) -> int:
        for child in self._children.values():
            status = child.proc.poll() if child.proc else None
            if status is None:
                continue
            if status == EXIT_FATAL or child.is_crash_looping():
                logger.critical("%s cannot run (exit %s); stopping the service", child.role, status)
                return EXIT_FATAL
            logger.error("%s exited with %s; restarting it", child.role, status)
            if child.proc is not None:
                mark_process_dead(child.proc.pid, self._settings.service.metrics_dir)
            child.start(self._env)
        return 0

    def _shutdown(self, timeout_s: float) -> None:
        logger.info("stopping: ingest first, then the flusher drains for up to %.0f s",
                    self._settings.service.shutdown_grace)
        self._children["ingest"].stop(timeout_s)
        self._children["flusher"].stop(self._settings.service.shutdown_grace + timeout_s)
        self._children["query"].stop(timeout_s)
        logger.info("stopped")


def warn_if_exposed(settings: Settings) -> None:
    for name, host in (("ingest", settings.ingest.host), ("query", settings.query.host)):
        if host not in LOOPBACK and not settings.auth.is_enabled:
            logger.warning("%s listens on %s without API keys: anyone who can reach it can write, read and "
                           "delete. Configure [auth] keys or bind to 127.0.0.1.", name, host)


def _die_with_parent() -> None:
    # If the supervisor is killed (even with SIGKILL), its children get SIGTERM
    # and stop cleanly instead of holding the ports against the next start.
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _own_children() -> list[int]:
    pid = os.getpid()
    children: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as file:
            children.extend(int(p) for p in file.read().split())
    return children


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        return True


def metrics_env(settings: Settings) -> dict[str, str]:
    """The environment of a child: prometheus-client's multiprocess mode reads
    its folder from PROMETHEUS_MULTIPROC_DIR when the child imports it."""
    os.makedirs(settings.service.metrics_dir, exist_ok=True)
    return {**os.environ, MULTIPROC_ENV: settings.service.metrics_dir}


def exec_role(role: str, settings: Settings) -> None:
    """Replace this process with one role (for systemd units and containers)."""
    warn_if_exposed(settings)
    argv = role_command(role, settings)
    os.execve(argv[0], argv, metrics_env(settings))
