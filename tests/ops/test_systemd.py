"""The systemd units in ops/systemd: `systemd-analyze verify` accepts them
without a warning, and the three roles started the way the units start them
(each its own process, one config, one metrics folder) make a working
node: a write is acknowledged, drained, read back, counted in /metrics, and
each role stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from testkit.service import Service, session, task, wait_for

UNITS = Path(__file__).resolve().parents[2] / "ops" / "systemd"
INSTALLED = "/opt/persistence-service/.venv/bin/persistence-service"
ENTRY_POINT = str(Path(sys.executable).parent / "persistence-service")
ROLES = ("flusher", "query", "ingest")


def unit(role: str) -> str:
    return (UNITS / f"persistence-service-{role}.service").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_units_without_a_warning(tmp_path: Path) -> None:
    for path in UNITS.iterdir():
        # The installed path, made this checkout's: verify checks that ExecStart is executable.
        (tmp_path / path.name).write_text(path.read_text().replace(INSTALLED, ENTRY_POINT))
    checked = subprocess.run(["systemd-analyze", "verify", "--man=no",
                              *sorted(str(p) for p in tmp_path.iterdir())],
                             capture_output=True, text=True, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ours = [line for line in (checked.stdout + checked.stderr).splitlines() if str(tmp_path) in line]
    assert not ours, ours


def test_the_three_roles_started_as_the_units_do_make_a_working_node(tmp_path: Path) -> None:
    node = Service(tmp_path / "node", f"sqlite:///{tmp_path / 'store.db'}")  # its config and ports, not started
    env = {**os.environ, "PS_CONFIG": str(node.config), "PS_SERVICE_METRICS_DIR": str(tmp_path / "metrics")}
    procs = {}
    try:
        for role in ROLES:
            start = re.search(r"^ExecStart=(\S+) (\w+)$", unit(role), re.M)
            assert start is not None and start.groups() == (INSTALLED, role), f"{role}: {start}"
            assert "Environment=PS_CONFIG=" in unit(role) and "Environment=PS_SERVICE_METRICS_DIR=" in unit(role)
            with open(tmp_path / f"{role}.log", "wb") as log:
                procs[role] = subprocess.Popen([ENTRY_POINT, role], env=env, cwd=node.folder, stdout=log,
                                               stderr=subprocess.STDOUT)
        http = httpx.Client(base_url=f"http://127.0.0.1:{node.ingest_port}", timeout=30)
        wait_for(lambda: http.get("/health").status_code == 200, 30, "the node to answer /health")
        assert http.post("/api/v1/translation/sessions/batch", json={"sessions": [session("unit-1")]}).status_code == 202
        assert http.post("/api/v1/translation/tasks/batch",
                         json={"tasks": [task(f"u-{i}", "unit-1") for i in range(5)]}).status_code == 202
        wait_for(lambda: http.get("/api/v1/translation/sessions/unit-1").status_code == 200, 30, "the drain")
        assert len(http.get("/api/v1/translation/sessions/unit-1/tasks").json()["items"]) == 5
        metrics = http.get("/metrics").text  # the flusher's samples, through the ingest role's endpoint
        rows = re.findall(r'^persistence_flush_rows_total\{[^}]*\} (\S+)$', metrics, re.M)
        assert rows and sum(float(r) for r in rows) >= 6, rows
        http.close()
    finally:
        node.http.close()
        # The order systemd stops them in (ingest is After= query) and the supervisor does: ingest first, so no
        # proxied keep-alive connection holds the query role's graceful stop.
        codes: dict[str, int | None] = {}
        for role in ("ingest", "flusher", "query"):
            if role not in procs:
                continue
            procs[role].send_signal(signal.SIGTERM)
            try:
                codes[role] = procs[role].wait(30)
            except subprocess.TimeoutExpired:
                procs[role].kill()
                procs[role].wait(10)
                codes[role] = None  # did not stop on SIGTERM
    assert codes == {role: 0 for role in ROLES}, codes
