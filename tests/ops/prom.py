"""Helpers for the ops tests: the shipped monitoring files, promtool, the
metric names the service defines, and a real Prometheus server in a tmp
folder that scrapes a test service with the shipped configuration."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from prometheus_client.metrics import MetricWrapperBase

from core import metrics
from core.times import now_us
from testkit.service import free_port, wait_for
from wal.types import SpoolStats

OPS = Path(__file__).resolve().parents[2] / "ops"
ALERTS = OPS / "prometheus" / "alerts.yml"
CONFIG = OPS / "prometheus" / "prometheus.yml"
DASHBOARD = OPS / "grafana" / "persistence-service.json"
SHIPPED_TARGET = '"127.0.0.1:8001"'
# What the dashboard's Grafana variables stand for when a test runs its queries.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}
_SAMPLE_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def binary(name: str) -> str:
    """The path of a Prometheus binary. CI installs them (.ci/run) and fails
    without them; elsewhere (the README's test command on a fresh machine)
    a test that needs one is skipped and says how to get it."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed: .ci/run installs it (apt-get install -y prometheus)")
    pytest.skip(f"{name} is not installed: apt-get install -y prometheus to run this test (CI always does)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=60)


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", ALERTS.read_text(), re.M)


def metric_names_in(text: str) -> set[str]:
    return set(re.findall(r"\bpersistence_[a-z_]+[a-z]\b", text))


def exported_names() -> set[str]:
    """Every sample name the service can expose: the metrics defined in
    core/metrics.py, with the suffixes of their type, and the spool gauges."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            (family,) = value.describe()
            names.update(family.name + suffix for suffix in _SAMPLE_SUFFIXES[family.type])
    empty = SpoolStats(**{f.name: f.type() for f in msgspec.structs.fields(SpoolStats)})  # zeros, "" and False
    names.update(family.name for family in metrics.spool_gauges(empty, now_us()))
    return names


def without_annotations(rules: str) -> str:
    """The rules file minus its annotations, so that rule unit tests check
    expressions, durations and labels without restating every summary."""
    out: list[str] = []
    skip_deeper_than: int | None = None
    for line in rules.splitlines():
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None and (not line.strip() or indent > skip_deeper_than):
            continue
        skip_deeper_than = indent if line.strip() == "annotations:" else None
        if skip_deeper_than is None:
            out.append(line)
    return "\n".join(out) + "\n"


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard's panels."""
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"]
            for target in panel.get("targets", [])]


def with_grafana_variables(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected exactly one {old!r} in {CONFIG}"
    return text.replace(old, new)


class Prometheus:
    """A real `prometheus` process using the shipped prometheus.yml and
    alerts.yml, scraping target every interval, all in folder."""

    def __init__(self, folder: Path, target: str, interval: str = "1s") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        config = CONFIG.read_text()
        config = _replace_once(config, SHIPPED_TARGET, f'"{target}"')
        config = _replace_once(config, "scrape_interval: 15s", f"scrape_interval: {interval}")
        config = _replace_once(config, "evaluation_interval: 15s", f"evaluation_interval: {interval}")
        (folder / "prometheus.yml").write_text(config)
        shutil.copy(ALERTS, folder / "alerts.yml")
        self.folder = folder
        self.port = free_port()
        self.log = folder / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def start(self, timeout: float = 30) -> Prometheus:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [binary("prometheus"), f"--config.file={self.folder / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.folder / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--log.level=warn"], cwd=self.folder, stdout=log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"prometheus exited:\n{self.tail()}"
            return self.http.get("/-/ready").status_code == 200
        wait_for(ready, timeout, "prometheus to be ready")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.http.close()

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api(self, path: str, **params: str) -> Any:
        answer = self.http.get(f"/api/v1/{path}", params=params)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", f"{path} {params}: {answer.text}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of expr now: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        return self.api("query", query=expr)["result"]

    def scalar(self, expr: str) -> float | None:
        """The single value of expr now (None when it has no sample)."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} gave {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        return self.api("alerts")["alerts"]

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
