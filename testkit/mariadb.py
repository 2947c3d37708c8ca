"""A private MariaDB server in a folder of its own (datadir, socket, port),
for tests that stop or reconfigure the database and for benchmarks with a
stated configuration. Never touches the shared server on 3306."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pymysql

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"

# Stated configuration: durable commits (a committed batch survives a crash of
# the server), a buffer pool that holds the benchmark's working set.
DEFAULT_OPTIONS = {
    "innodb_buffer_pool_size": "1G",
    "innodb_log_file_size": "512M",
    "innodb_flush_log_at_trx_commit": "1",
    "sync_binlog": "0",
    "max_allowed_packet": "64M",
    "max_connections": "200",
    "local_infile": "1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateMariaDB:
    def __init__(self, folder: Path, options: dict[str, str] | None = None, port: int | None = None) -> None:
        self.folder = Path(folder)
        self.datadir = self.folder / "data"
        self.socket = self.folder / "mysqld.sock"
        self.port = port or _free_port()
        self.options = {**DEFAULT_OPTIONS, **(options or {})}
        self.proc: subprocess.Popen | None = None

    def url(self, database: str) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{database}"

    def describe(self) -> str:
        return "MariaDB (private instance): " + ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))

    def start(self, timeout: float = 60) -> None:
        if not self.datadir.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            subprocess.run([INSTALL_DB, "--no-defaults", f"--datadir={self.datadir}", "--user=root",
                            "--auth-root-authentication-method=normal", "--skip-test-db"],
                           check=True, capture_output=True)
        args = [MARIADBD, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
                f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root",
                f"--pid-file={self.folder / 'mysqld.pid'}", f"--log-error={self.folder / 'error.log'}",
                "--skip-log-bin"] + [f"--{k}={v}" for k, v in self.options.items()]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited; see {self.folder / 'error.log'}")
            if self.is_up():
                return
            time.sleep(0.2)
        raise RuntimeError(f"mariadbd did not answer within {timeout} s")

    def is_up(self) -> bool:
        try:
            pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=1).close()
            return True
        except pymysql.err.MySQLError:
            return False

    def stop(self, timeout: float = 60) -> None:
        """A clean shutdown (SIGTERM), as an operator's restart would do."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
