"""The client installs on its own: `pip install ./client` into an empty venv
brings persistence_client and persistence_api with msgspec and httpx, and
nothing of the service."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).parents[2] / "client"
PROBE = """
import sys, importlib.util
import persistence_client, persistence_api.translation, persistence_api.audit
from persistence_client import PersistenceClient, AsyncPersistenceClient
service = [m for m in ("core", "ingest", "starlette", "granian", "pymysql", "boto3", "redis")
           if importlib.util.find_spec(m) is not None]
print("service modules:", service)
"""


@pytest.mark.slow
def test_the_client_installs_alone(tmp_path: Path) -> None:
    source = tmp_path / "client"  # pip builds in the source folder: build from a copy, not from the repository
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(source)], capture_output=True,
                         text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", PROBE], capture_output=True, text=True, timeout=60,
                           cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert "service modules: []" in probe.stdout
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=freeze"], capture_output=True, text=True,
                            timeout=60).stdout.lower()
    names = {line.split("==")[0] for line in listed.split()}
    assert {"persistence-client", "msgspec", "httpx"} <= names
    assert not names & {"persistence-service", "starlette", "granian", "pymysql", "boto3", "redis"}
