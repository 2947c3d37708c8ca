"""A private redis-server in a folder of its own, for tests that kill or
restart Redis (the shared one on 127.0.0.1:6379 must stay up). By default
it keeps nothing on disk (--save "" --appendonly no): a restart loses every
key, as a Redis without persistence does; persistent=True keeps an
append-only file fsynced on every write, so a kill -9 loses nothing.

Redis refuses port 0, so a free loopback port is picked first and kept for
restarts: clients reconnect to the same address.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None and Path("/usr/bin/redis-server").exists():  # PATH without /usr/bin (some CI shells)
        found = "/usr/bin/redis-server"
    if found is None:
        raise RuntimeError("no `redis-server` binary: apt-get install redis-server")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pings(port: int) -> bool:
    """A raw PING, so that waiting needs no client library and no pool."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, folder: Path, persistent: bool = False) -> None:
        self.folder = Path(folder)
        self.persistent = persistent
        self.port = _free_port()
        self.log_path = self.folder / "redis.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--dir", str(self.folder),
                *(["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]),
                "--daemonize", "no", "--logfile", ""]  # the log goes to stdout, i.e. log_path

    def start(self, timeout: float = 10) -> None:
        """Start (or start again on the same port) and wait until PING answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not _pings(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer within {timeout} s; see {self.log_path}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, as a crash: clients see their connections reset."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def restart(self, down_s: float = 0.0) -> None:
        """Kill, stay down for down_s, start again on the same port (with no keys)."""
        self.kill()
        time.sleep(down_s)
        self.start()
