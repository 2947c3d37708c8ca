"""The shipped monitoring files (ops/): promtool accepts them, they name only
metrics the service defines, every alert fires on the series it is meant for
and stays quiet on a healthy service (promtool's rule unit tests), and a real
Prometheus scraping a real service with them sees exactly what it did."""

from __future__ import annotations

import os
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from testkit.service import TASKS, Service, session, task, wait_for
from tests.ops import prom

JOB = {"job": "persistence-service", "instance": "host:8001"}
SERVICE_FIELDS = ",".join(f'{k}="{v}"' for k, v in JOB.items())
TASK_REQUESTS = 120
TASKS_PER_REQUEST = 10


def test_promtool_accepts_the_rules() -> None:
    checked = prom.promtool("check", "rules", str(prom.ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_accepts_the_config() -> None:
    checked = prom.promtool("check", "config", str(prom.CONFIG))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_monitoring_files_name_only_metrics_the_service_defines() -> None:
    exported = prom.exported_names()
    for path in (prom.ALERTS, prom.DASHBOARD):
        used = prom.metric_names_in(path.read_text())
        assert used, f"{path} names no persistence_ metric"
        assert used <= exported, f"{path} names metrics core/metrics.py does not define: {used - exported}"
    dashboard_uses = prom.metric_names_in(prom.DASHBOARD.read_text())
    assert dashboard_uses == exported - {"persistence_http_request_duration_seconds_count",
                                         "persistence_http_request_duration_seconds_sum"}, \
        "a metric is missing from the dashboard"


def test_dashboard_panels_are_well_formed() -> None:
    board = prom.dashboard()
    panels = board["panels"]
    assert board["uid"] and board["title"] and len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        place = panel["gridPos"]
        assert place["x"] >= 0 and place["w"] > 0 and place["x"] + place["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    variables = {v["name"] for v in board["templating"]["list"]}
    used = {name for _, expr in prom.dashboard_queries() for name in ("instance",) if f"${name}" in expr}
    assert used <= variables


# -- alert rules on synthetic series (promtool test rules) ---------------------

def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{SERVICE_FIELDS}{extra}}}", "values": values}


def _healthy(overrides: dict[tuple[str, str], str] | None = None) -> list[dict[str, str]]:
    """20 minutes of a healthy service (1-minute samples); overrides replace
    the values of (metric, role or class) and may add series."""
    series = {
        ("up", ""): "1x20",
        ("persistence_process_up", "ingest"): "2x20",
        ("persistence_process_up", "flusher"): "1x20",
        ("persistence_process_up", "query"): "1x20",
        ("persistence_spool_bytes", ""): "1000x20",
        ("persistence_spool_capacity_bytes", ""): "100000x20",
        ("persistence_spool_refusing", ""): "0x20",
        ("persistence_flusher_heartbeat_timestamp_seconds", ""): "0+60x20",  # beats now
        ("persistence_last_flush_timestamp_seconds", ""): "0+60x20",
        ("persistence_spool_oldest_record_age_seconds", ""): "0.5x20",
        ("persistence_sink_up", ""): "1x20",
        ("persistence_flusher_stalled", ""): "0x20",
        ("persistence_sink_errors_total", "transient"): "0x20",
        ("persistence_sink_errors_total", "permanent"): "0x20",
        ("persistence_dead_lettered_total", "any"): "0x20",
        ("persistence_dead_letters", ""): "0x20",
        ("persistence_blob_store_errors_total", "commit"): "0x20",
        ("persistence_backup_last_success_timestamp_seconds", ""): "0+60x20",  # one just completed
        ("persistence_backup_interval_seconds", ""): "300x20",
    }
    series.update(overrides or {})
    label_of = {"persistence_process_up": "role", "persistence_sink_errors_total": "error_class",
                "persistence_dead_lettered_total": "kind", "persistence_blob_store_errors_total": "operation",
                "persistence_session_store_errors_total": "operation"}
    return [_series(name, values, **({label_of[name]: which} if which else {}))
            for (name, which), values in series.items()]


def _fires(alert: str, quiet_at: str, firing_at: str, **labels: str) -> list[dict[str, Any]]:
    expected = {"severity": _severity(alert), **JOB, **labels}
    return [{"eval_time": quiet_at, "alertname": alert, "exp_alerts": []},
            {"eval_time": firing_at, "alertname": alert, "exp_alerts": [{"exp_labels": expected}]}]


def _severity(alert: str) -> str:
    warnings = {"PersistenceSpoolFilling", "PersistenceLagHigh", "PersistenceSinkTransientErrors",
                "PersistenceDeadLetters", "PersistenceBlobStoreErrors", "PersistenceSessionStoreErrors",
                "PersistenceAuditEventsDropped"}
    return "warning" if alert in warnings else "critical"


def _case(overrides: dict[tuple[str, str], str], checks: list[dict[str, Any]],
          quiet: tuple[str, ...] = ()) -> dict[str, Any]:
    """One scenario: the checks, plus `quiet` alerts that must not fire at 20m."""
    checks = checks + [{"eval_time": "20m", "alertname": name, "exp_alerts": []} for name in quiet]
    return {"interval": "1m", "input_series": _healthy(overrides), "alert_rule_test": checks}


def _rule_tests() -> list[dict[str, Any]]:
    names = prom.alert_names()
    stopped = "1x5 stale"
    return [
        # A healthy service, including one that has not flushed yet with nothing old waiting.
        _case({}, [], quiet=tuple(names)),
        _case({("persistence_last_flush_timestamp_seconds", ""): "0x20"}, [], quiet=tuple(names)),
        _case({("persistence_spool_bytes", ""): "85000x20"}, _fires("PersistenceSpoolFilling", "4m", "6m")),
        _case({("persistence_spool_refusing", ""): "0 0 1x18"}, _fires("PersistenceSpoolRefusingWrites", "2m", "4m")),
        # The heartbeat stops at 5m: 60 s old at 6m, then `for: 1m`.
        _case({("persistence_flusher_heartbeat_timestamp_seconds", ""): "0+60x5 300x15"},
              _fires("PersistenceFlusherHeartbeatStale", "7m", "9m")),
        # Last flush at 5m while records wait from 5m on: both 300 s old after 10m, then `for: 1m`.
        _case({("persistence_last_flush_timestamp_seconds", ""): "0+60x5 300x15",
               ("persistence_spool_oldest_record_age_seconds", ""): "0x5 0+60x15"},
              _fires("PersistenceFlusherNotFlushing", "11m", "13m")),
        # Stalled from 5m (the service's own judgement, flush.stall_after), then `for: 1m`.
        _case({("persistence_flusher_stalled", ""): "0x5 1x15"}, _fires("PersistenceFlusherStalled", "5m", "7m")),
        _case({("persistence_spool_oldest_record_age_seconds", ""): "45x20"}, _fires("PersistenceLagHigh", "4m", "6m")),
        _case({("persistence_sink_up", ""): "0x20"}, _fires("PersistenceDatabaseUnreachable", "4m", "6m")),
        _case({("persistence_sink_errors_total", "transient"): "0+10x20"},
              _fires("PersistenceSinkTransientErrors", "5m", "7m")),
        _case({("persistence_sink_errors_total", "permanent"): "0x5 3x15"},
              _fires("PersistenceSinkPermanentErrors", "5m", "7m")
              + [{"eval_time": "17m", "alertname": "PersistenceSinkPermanentErrors", "exp_alerts": []}]),
        _case({("persistence_dead_lettered_total", "any"): "0x5 2x15", ("persistence_dead_letters", ""): "0x5 2x15"},
              _fires("PersistenceDeadLetters", "5m", "7m")),
        _case({("persistence_blob_store_errors_total", "commit"): "0x5 0+2x15"},
              _fires("PersistenceBlobStoreErrors", "5m", "12m")),
        _case({("persistence_session_store_errors_total", "touch"): "0x5 0+2x15"},
              _fires("PersistenceSessionStoreErrors", "5m", "12m")),
        _case({("persistence_audit_events_dropped_total", ""): "0x5 0+5x15"},
              _fires("PersistenceAuditEventsDropped", "5m", "7m")),
        # The last backup completed at 0; twice the interval (600 s) passes at 10m, then `for: 5m`.
        _case({("persistence_backup_last_success_timestamp_seconds", ""): "0x20"},
              _fires("PersistenceBackupTooOld", "10m", "16m")),
        # Backups only on request (interval 0): never.
        _case({("persistence_backup_last_success_timestamp_seconds", ""): "0x20",
               ("persistence_backup_interval_seconds", ""): "0x20"}, [], quiet=("PersistenceBackupTooOld",)),
        # The counter's series appears with its first dead letter: the table's size catches it.
        _case({("persistence_dead_lettered_total", "any"): "_x5 1x15", ("persistence_dead_letters", ""): "0x5 1x15"},
              _fires("PersistenceDeadLetters", "5m", "7m")),
        # The whole target stops answering: its series go stale; no role alert on top.
        _case({("up", ""): "1x5 0x15", **{("persistence_process_up", role): stopped
                                          for role in ("ingest", "flusher", "query")}},
              _fires("PersistenceTargetDown", "6m", "8m"), quiet=("PersistenceRoleDown",)),
        _case({("persistence_process_up", "query"): stopped}, _fires("PersistenceRoleDown", "6m", "8m", role="query")),
        _case({("persistence_process_up", "flusher"): "1x5 0x15"},
              _fires("PersistenceRoleDown", "6m", "8m", role="flusher")),
    ]


def test_every_alert_fires_on_its_series_and_not_on_a_healthy_service(tmp_path: Path) -> None:
    (tmp_path / "alerts.yml").write_text(prom.without_annotations(prom.ALERTS.read_text()))
    tests = _rule_tests()
    covered = {check["alertname"] for case in tests for check in case["alert_rule_test"] if check["exp_alerts"]}
    assert covered == set(prom.alert_names()), f"alerts without a firing test: {set(prom.alert_names()) - covered}"
    spec = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "tests.yml").write_text(json.dumps(spec, indent=1))  # JSON is YAML
    result = prom.promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


# -- a real Prometheus scraping a real service ---------------------------------

def _post_tasks(port: int, number: int) -> int:
    batch = [task(f"t-{number}-{i}", "s-0") for i in range(TASKS_PER_REQUEST)]
    # A connection per request, so that the kernel spreads them over the ingest workers.
    answer = httpx.post(f"http://127.0.0.1:{port}{TASKS}", json={"tasks": batch}, timeout=30)
    assert answer.status_code == 202, answer.text
    return len(batch)


def _accepted_by_process(service: Service) -> dict[str, float]:
    """persistence_records_accepted_total of each process, from its own sample file."""
    folder = service.folder / "data" / "metrics"
    counts: dict[str, float] = {}
    for file in folder.glob("counter_*.db"):
        alone = service.folder / "one-process" / file.stem
        alone.mkdir(parents=True)
        shutil.copy(file, alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        counts[file.stem] = sum(registry.get_sample_value("persistence_records_accepted_total", {"kind": kind}) or 0
                                for kind in ("session", "task"))
    return {pid: n for pid, n in counts.items() if n}


def _write_known_records(service: Service) -> int:
    """Sessions, many task batches in parallel over fresh connections, and one
    orphan task that becomes a dead letter after orphan_grace: how many were accepted."""
    assert service.post_sessions([session(f"s-{i}") for i in range(20)]).status_code == 202
    with ThreadPoolExecutor(8) as pool:
        tasks = sum(pool.map(lambda n: _post_tasks(service.ingest_port, n), range(TASK_REQUESTS)))
    assert service.post_tasks([task("orphan", "no-such-session")]).status_code == 202
    return 20 + tasks + 1


@pytest.mark.slow
def test_prometheus_scrapes_the_service_with_the_shipped_files(service_factory, tmp_path: Path) -> None:
    service = service_factory(f"sqlite:///{tmp_path / 'store.db'}", workers=2, orphan_grace=1.0)
    with prom.Prometheus(tmp_path / "prometheus", f"127.0.0.1:{service.ingest_port}") as prometheus:
        wait_for(lambda: prometheus.scalar('up{job="persistence-service"}') == 1, 30, "a first scrape")
        written = _write_known_records(service)
        assert len(_accepted_by_process(service)) >= 2, "one ingest worker took every request"

        wait_for(lambda: prometheus.scalar("sum(persistence_records_accepted_total)") == written, 30,
                 f"Prometheus to count {written} accepted records")
        wait_for(lambda: prometheus.scalar("sum(persistence_flush_rows_total)"
                                           " + sum(persistence_dead_lettered_total)") == written, 30,
                 "every accepted record to be flushed or dead-lettered")
        up = {r["metric"]["role"]: float(r["value"][1]) for r in prometheus.query("persistence_process_up")}
        assert up == {"ingest": 2, "flusher": 1, "query": os.cpu_count()}  # query.workers = 0: one per CPU

        _check_rules(prometheus)
        _check_dashboard_queries(prometheus)


def _check_rules(prometheus: prom.Prometheus) -> None:
    def evaluated() -> list[dict[str, Any]]:
        rules = prometheus.rules()
        return rules if all(r["lastEvaluation"] > "2000" for r in rules) else []
    rules = wait_for(evaluated, 30, "every rule to be evaluated")
    assert sorted(r["name"] for r in rules) == sorted(prom.alert_names())
    assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []

    def dead_letter_alert() -> list[dict[str, Any]]:
        alerts = prometheus.alerts()
        return alerts if any(a["labels"]["alertname"] == "PersistenceDeadLetters" and a["state"] == "firing"
                             for a in alerts) else []
    alerts = wait_for(dead_letter_alert, 30, "the dead-letter alert to fire")
    assert [a["labels"]["alertname"] for a in alerts] == ["PersistenceDeadLetters"], alerts
    assert alerts[0]["annotations"]["summary"].startswith("New dead letters on 127.0.0.1:")


def _check_dashboard_queries(prometheus: prom.Prometheus) -> None:
    empty: list[str] = []
    for title, expr in prom.dashboard_queries():
        if not prometheus.query(prom.with_grafana_variables(expr)):  # a query Prometheus refuses fails here
            empty.append(title)
    # Errors, retries and quantiles of idle routes may be empty; the write path may not.
    for title in ("Accepted vs flushed rows/s", "Spool depth (records waiting)", "Request rate by route",
                  "Live processes by role", "Lag: oldest waiting record age", "Flush duration"):
        assert title not in empty, f"dashboard panel {title!r} shows nothing"
