"""HAProxy with the shipped ops/haproxy/haproxy.cfg in front of several
service nodes, on free loopback ports, for tests and drills. The config
takes its addresses from the environment, so what runs here is exactly the
file an operator deploys.

    proxy = Haproxy(folder, [node1_addr, node2_addr, node3_addr]); proxy.start()
    proxy.url                      # the one URL clients use
    proxy.states()                 # {"node1": "UP", "node2": "DOWN", ...}
    proxy.requests()               # requests each node was given
    proxy.stop()
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from testkit.service import free_port, wait_for

CONFIG = Path(__file__).resolve().parent.parent / "ops" / "haproxy" / "haproxy.cfg"
NODES = 3  # server lines in the shipped config


def available() -> bool:
    return shutil.which("haproxy") is not None or Path("/usr/sbin/haproxy").exists()


def _binary() -> str:
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


class Haproxy:
    def __init__(self, folder: Path, nodes: list[str]) -> None:
        assert len(nodes) == NODES, f"the shipped config names {NODES} nodes"
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.stats_port = free_port()
        self.env = {**os.environ, "PS_HAPROXY_BIND": f"127.0.0.1:{self.port}",
                    "PS_HAPROXY_STATS": f"127.0.0.1:{self.stats_port}",
                    **{f"PS_NODE{i + 1}": address for i, address in enumerate(nodes)}}
        self.log = folder / "haproxy.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        checked = subprocess.run([_binary(), "-c", "-f", str(CONFIG)], env=self.env, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        with open(self.log, "ab") as log:
            # -db: stay in the foreground, so that the test owns the process.
            self.proc = subprocess.Popen([_binary(), "-db", "-f", str(CONFIG)], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self._stats(), 10, "haproxy's stats page")

    def _stats(self) -> list[dict[str, str]]:
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/;csv", timeout=5).text
        return list(csv.DictReader(io.StringIO(text.lstrip("# "))))

    def servers(self) -> dict[str, dict[str, str]]:
        return {row["svname"]: row for row in self._stats()
                if row["pxname"] == "nodes" and row["svname"] not in ("FRONTEND", "BACKEND")}

    def states(self) -> dict[str, str]:
        """UP, DOWN, or a transition such as "UP 1/2" (first word only)."""
        return {name: row["status"].split()[0] for name, row in self.servers().items()}

    def requests(self) -> dict[str, int]:
        """HTTP requests each node answered (the backend's per-server total)."""
        return {name: int(row["stot"] or 0) for name, row in self.servers().items()}

    def wait_state(self, node: str, state: str, timeout: float = 15) -> float:
        """Seconds until haproxy shows the node in that state."""
        started = time.monotonic()
        wait_for(lambda: self.states().get(node) == state, timeout, f"haproxy to mark {node} {state}",
                 interval=0.05)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
