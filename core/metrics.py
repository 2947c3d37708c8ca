"""Prometheus metrics, aggregated over every process of the service.

Every process writes its samples to files in PROMETHEUS_MULTIPROC_DIR (set by
the supervisor for its children, see prometheus-client's multiprocess mode);
the process that answers /metrics merges them and adds the spool's gauges,
read from the spool at scrape time so they are right whoever asks.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.requests import Request
from starlette.responses import Response

from core import VERSION
from core.auth import ScopedRoute
from core.kinds import KINDS
from core.times import now_us

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

HTTP_REQUESTS = Counter("persistence_http_requests_total", "HTTP requests answered.",
                        ["role", "route", "method", "status"])
HTTP_DURATION = Histogram("persistence_http_request_duration_seconds", "Time to answer an HTTP request.",
                          ["role", "route", "method"], buckets=_LATENCY_BUCKETS)
RECORDS_ACCEPTED = Counter("persistence_records_accepted_total", "Records acknowledged (202) by kind.", ["kind"])
FLUSH_BATCHES = Counter("persistence_flush_batches_total", "Batches committed to the sink.")
FLUSH_ROWS = Counter("persistence_flush_rows_total", "Rows committed to the sink by kind.", ["kind"])
FLUSH_DURATION = Histogram("persistence_flush_duration_seconds", "Time of one drain cycle (read, write, trim).",
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
SINK_ERRORS = Counter("persistence_sink_errors_total", "Sink errors by class.", ["error_class"])
FLUSH_RETRIES = Counter("persistence_flush_retries_total", "Drain cycles retried after a transient error.")
FLUSH_CONFLICTS = Counter("persistence_flush_conflicts_total",
                          "Sink writes retried at once after a deadlock or certification conflict (1213).")
DEAD_LETTERED = Counter("persistence_dead_lettered_total", "Records moved to the dead-letter table.", ["kind"])
FILE_BYTES = Counter("persistence_file_bytes_total", "File content bytes through the service.", ["direction"])
FILE_UPLOADS = Counter("persistence_file_uploads_total", "File uploads by outcome.", ["outcome"])
FILE_DEDUP_HITS = Counter("persistence_file_dedup_hits_total", "Uploads whose content was already stored.")
BLOB_STORE_ERRORS = Counter("persistence_blob_store_errors_total", "Blob store failures by operation.",
                            ["operation"])
FILES_COLLECTED = Counter("persistence_files_collected_total", "Garbage collected by the file sweeper.", ["what"])
LOGINS = Counter("persistence_logins_total", "Password checks (POST /users/authenticate) by outcome.", ["outcome"])
USER_SESSIONS_ACTIVE = Gauge("persistence_user_sessions_active", "Valid login sessions in the session store.",
                             multiprocess_mode="mostrecent")
USER_CACHE = Counter("persistence_user_cache_total", "User cache lookups by result (hit ratio = hit / all).",
                     ["result"])
REDIS_ERRORS = Counter("persistence_redis_errors_total", "Failed calls to Redis by use.", ["use"])
SESSION_STORE_ERRORS = Counter("persistence_session_store_errors_total", "Session store failures by operation.",
                               ["operation"])
AUDIT_EVENTS_DROPPED = Counter("persistence_audit_events_dropped_total",
                               "The service's own audit events not recorded (refusals over audit.refusals_per_s, "
                               "or the spool refused them).")
AUDIT_SEARCH_SECONDS = Histogram("persistence_audit_search_seconds", "Audit event lists and searches by kind "
                                 "(filter: no q; text: with q).", ["kind"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
AUDIT_EVENTS_STORED = Gauge("persistence_audit_events_stored", "Audit events in the sink (the chain's length).",
                            multiprocess_mode="mostrecent")
AUDIT_INDEX_BYTES = Gauge("persistence_audit_index_bytes", "Size of the audit search index (measured every 10 min).",
                          multiprocess_mode="mostrecent")
BACKUPS = Counter("persistence_backups_total", "Backups ended, by status (completed or failed).", ["status"])
BACKUP_LAST_SUCCESS = Gauge("persistence_backup_last_success_timestamp_seconds",
                            "When the newest completed backup finished (0: none yet).", multiprocess_mode="mostrecent")
BACKUP_LAST_SIZE = Gauge("persistence_backup_last_size_bytes", "Stored (compressed) size of the newest completed backup.",
                         multiprocess_mode="mostrecent")
BACKUPS_KEPT = Gauge("persistence_backups_kept", "Completed backups in the backup store.", multiprocess_mode="mostrecent")
BACKUP_INTERVAL = Gauge("persistence_backup_interval_seconds", "backup.interval (0: only on request); the alert rule"
                        " compares the last success's age with it.", multiprocess_mode="mostrecent")
ARCHIVED_ROWS = Counter("persistence_archived_rows_total", "Rows moved to the archive by the flusher, by table "
                        "(sessions, tasks, audit_events).", ["table"])
ARCHIVED_BYTES = Counter("persistence_archived_bytes_total", "Compressed bytes written to archive objects, by area "
                         "(sessions, audit).", ["area"])
ARCHIVE_RESTORES = Counter("persistence_archive_restores_total", "Archived sessions written back to the hot tables.")
ARCHIVE_STORED_ROWS = Gauge("persistence_archive_stored_rows", "Rows held in the archive by table (from its index).",
                            ["table"], multiprocess_mode="mostrecent")
ARCHIVE_STORED_BYTES = Gauge("persistence_archive_stored_bytes", "Compressed bytes held in the archive by area "
                             "(from its index).", ["area"], multiprocess_mode="mostrecent")
PROCESS_UP = Gauge("persistence_process_up", "Live processes of the service by role.", ["role"],
                   multiprocess_mode="livesum")


# created: 201 sent; too_large: 413; rejected: bad input or a digest/size that did not match;
# aborted: the client went away; failed: the store or the database failed.
UPLOAD_OUTCOMES = ("created", "too_large", "rejected", "aborted", "failed")

# ok: 200; failed: 401 (unknown login, wrong password, disabled user); limited: 429 before the check.
LOGIN_OUTCOMES = ("ok", "failed", "limited")

BUILD_INFO = Gauge("persistence_build_info", "The running version (value 1).", ["version"],
                   multiprocess_mode="max")


def mark_up(role: str) -> None:
    """Called once per process at start: up, and every counter series at 0, so
    that increase() sees the first event after a start (a series that appears
    already at 1 reads as no increase)."""
    PROCESS_UP.labels(role).set(1)
    BUILD_INFO.labels(VERSION).set(1)
    for kind in KINDS:
        RECORDS_ACCEPTED.labels(kind.name)
        FLUSH_ROWS.labels(kind.name)
        DEAD_LETTERED.labels(kind.name)
    DEAD_LETTERED.labels("command")
    for error_class in ("transient", "permanent"):
        SINK_ERRORS.labels(error_class)
    for direction in ("in", "out"):
        FILE_BYTES.labels(direction)
    for outcome in UPLOAD_OUTCOMES:
        FILE_UPLOADS.labels(outcome)
    for what in ("expired_uploads", "contents", "leftovers"):
        FILES_COLLECTED.labels(what)
    for outcome in LOGIN_OUTCOMES:
        LOGINS.labels(outcome)
    for result in ("hit", "miss"):
        USER_CACHE.labels(result)
    for use in ("sessions", "cache"):
        REDIS_ERRORS.labels(use)


def render(extra: Callable[[], Iterator[Metric]] | None = None) -> bytes:
    """The metrics text of every process (or of this one, outside multiprocess mode)."""
    registry = CollectorRegistry()
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        _forget_dead_processes(path)
        MultiProcessCollector(registry, path=path)
    else:
        from prometheus_client import REGISTRY
        registry = REGISTRY
    text = generate_latest(registry)
    if extra is not None:
        scrape = CollectorRegistry()
        scrape.register(_Callback(extra))
        text += generate_latest(scrape)
    return text


def spool_gauges(stats: Any, now_us: int, stalled_s: float = 0.0, stall_after_s: float = 30.0) -> Iterator[Metric]:
    """Gauges read from the spool at scrape time (stats: wal.types.SpoolStats;
    stalled_s: SpoolStats.stalled_seconds)."""
    records = GaugeMetricFamily("persistence_spool_records", "Records waiting in the spool.", labels=["kind"])
    records.add_metric(["session"], stats.pending_sessions)
    records.add_metric(["task"], stats.pending_tasks)
    records.add_metric(["audit_event"], stats.pending_events)
    yield records
    yield GaugeMetricFamily("persistence_spool_bytes", "Payload bytes waiting in the spool.", value=stats.pending_bytes)
    yield GaugeMetricFamily("persistence_spool_capacity_bytes", "spool.max_bytes.", value=stats.max_bytes)
    age = (now_us - stats.oldest_received_us) / 1e6 if stats.oldest_received_us else 0.0
    yield GaugeMetricFamily("persistence_spool_oldest_record_age_seconds",
                            "Age of the oldest record not yet in the database (the lag).", value=age)
    yield GaugeMetricFamily("persistence_spool_refusing", "1 while the spool refuses writes for space.",
                            value=int(stats.is_refusing))
    yield GaugeMetricFamily("persistence_orphans_held", "Tasks held until their session exists.",
                            value=stats.held_tasks)
    yield GaugeMetricFamily("persistence_dead_letters", "Records in the dead-letter table.", value=stats.dead_letters)
    heartbeat = stats.heartbeat_us / 1e6
    yield GaugeMetricFamily("persistence_flusher_heartbeat_timestamp_seconds",
                            "When the flusher last reported (Unix time).", value=heartbeat)
    yield GaugeMetricFamily("persistence_last_flush_timestamp_seconds",
                            "When the flusher last committed a batch (Unix time).", value=stats.last_flush_us / 1e6)
    yield GaugeMetricFamily("persistence_sink_up", "1 when the flusher's last contact with the database worked.",
                            value=int(stats.sink_healthy))
    yield GaugeMetricFamily("persistence_drain_rate_rows_per_second",
                            "Rows/s the flusher drains while busy (last measured; 0 = not yet).", value=stats.drain_rate)
    yield GaugeMetricFamily("persistence_spool_estimated_lag_seconds",
                            "Seconds the records waiting would take to drain at that rate (spool.max_lag refuses "
                            "writes past it; 0 while the rate is unknown).", value=stats.estimated_lag_s() or 0.0)
    yield GaugeMetricFamily("persistence_flusher_stalled_seconds",
                            "How long records have waited with nothing written while the database was not "
                            "reported down (0 while the flusher makes progress).", value=stalled_s)
    yield GaugeMetricFamily("persistence_flusher_stalled",
                            "1 when persistence_flusher_stalled_seconds passed flush.stall_after (/health is unhealthy).",
                            value=int(stalled_s >= stall_after_s))


class _Callback:
    def __init__(self, produce: Callable[[], Iterator[Metric]]) -> None:
        self._produce = produce

    def collect(self) -> Iterator[Metric]:
        return self._produce()


_LIVE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db$")


def _forget_dead_processes(path: str) -> None:
    # A granian worker that died never said so: drop its live gauges here.
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_FILE.search(file)
        if match and not _is_alive(int(match.group(1))):
            mark_process_dead(int(match.group(1)), path)


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics on either app: every process's samples plus the spool's gauges."""
    stats = request.state.spool.stats()
    now = now_us()
    stalled = stats.stalled_seconds(now)
    return Response(render(lambda: spool_gauges(stats, now, stalled, request.state.stall_after)),
                    media_type=CONTENT_TYPE)


METRICS_ROUTES = [ScopedRoute("/metrics", metrics_endpoint, methods=["GET"], access="read"),
                  ScopedRoute("/api/v1/system/metrics", metrics_endpoint, methods=["GET"], access="read")]
