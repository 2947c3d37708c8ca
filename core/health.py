"""The /health answer of API.md (served by both apps), computed from the
spool's counters and the flusher's published heartbeat: it never touches the
database, so it answers in milliseconds even while the database hangs. The
Structs here are the answer's one definition: they encode it and describe it
in /openapi.json."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

import msgspec
from msgspec import Struct

from persistence_api.system import Buffer, FlusherState, Health, StoreHealth
from core.times import iso_z, now_us
from wal.types import SpoolStats


# The query process checks the blob store and the session store in the
# background and leaves each result beside the spool, so /health on either
# port reports them without I/O to the stores (the ingest app never opens one).
STORE_HEALTH_FILES = {"blob_store": "blob-store.health", "session_store": "session-store.health"}
STORE_HEALTH_STALE_US = 60_000_000


class _StoreCheck(Struct):
    store: str
    error: str | None
    checked_us: int


def store_health_path(spool_path: str, component: str) -> Path:
    return Path(spool_path).parent / STORE_HEALTH_FILES[component]


def publish_store_health(spool_path: str, component: str, store: str, error: str | None) -> None:
    path = store_health_path(spool_path, component)
    temp = path.with_name(f"{path.name}.{os.getpid()}")
    temp.write_bytes(msgspec.json.encode(_StoreCheck(store, error, now_us())))
    os.replace(temp, path)


def read_store_health(spool_path: str, component: str) -> StoreHealth | None:
    with contextlib.suppress(FileNotFoundError, msgspec.DecodeError):
        check = msgspec.json.decode(store_health_path(spool_path, component).read_bytes(), type=_StoreCheck)
        status: Literal["healthy", "unhealthy", "unknown"] = "healthy" if check.error is None else "unhealthy"
        if now_us() - check.checked_us > STORE_HEALTH_STALE_US:
            status = "unknown"
        return StoreHealth(check.store, status, check.error, iso_z(check.checked_us))
    return None


def stores_health(spool_path: str) -> dict[str, StoreHealth | None]:
    """Every store's last check, by the Health field that reports it."""
    return {component: read_store_health(spool_path, component) for component in STORE_HEALTH_FILES}


def health_report(stats: SpoolStats, started_us: int, version: str, stall_after_s: float,
                  blob_store: StoreHealth | None = None,
                  session_store: StoreHealth | None = None) -> tuple[int, Health]:
    """(HTTP status, body): 503 exactly when the status is unhealthy. A blob
    or session store that fails makes the service degraded, not unhealthy:
    translation writes and reads still work."""
    now = now_us()
    flusher_alive = stats.is_flusher_alive(now)
    database_ok = flusher_alive and stats.sink_healthy
    stalled_s = stats.stalled_seconds(now)
    reason = None
    status: Literal["healthy", "degraded", "unhealthy"] = "healthy"
    if stats.is_refusing:
        status, reason = "unhealthy", "the spool is full: writes are refused until the flusher frees space"
    elif stalled_s >= stall_after_s:
        status = "unhealthy"
        reason = (f"the flusher has written nothing for {stalled_s:.0f} s while "
                  f"{stats.pending_records} records wait"
                  + ("" if flusher_alive else " (the flusher is not running)"))
    elif not database_ok:
        status = "degraded"
        reason = stats.sink_error or ("the flusher is not running" if not flusher_alive else None)
    elif blob_store is not None and blob_store.status == "unhealthy":
        status, reason = "degraded", f"the file store fails: {blob_store.error}"
    elif session_store is not None and session_store.status == "unhealthy":
        status, reason = "degraded", f"the session store fails: {session_store.error}"
    body = Health(
        status=status, reason=reason, database="healthy" if database_ok else "unhealthy",
        buffer=Buffer(
            sessions_count=stats.pending_sessions, tasks_count=stats.pending_tasks,
            events_count=stats.pending_events, total_count=stats.pending_records, capacity=stats.max_bytes,
            bytes=stats.pending_bytes, usage_percent=round(100 * stats.pending_bytes / stats.max_bytes, 2),
            last_flush=iso_z(stats.last_flush_us) if stats.last_flush_us else None,
            oldest_age_seconds=round((now - stats.oldest_received_us) / 1e6, 3) if stats.oldest_received_us else 0.0,
            held_orphans=stats.held_tasks, dead_letters=stats.dead_letters, disk_free_bytes=stats.disk_free_bytes,
            drain_rate=round(stats.drain_rate, 1), estimated_lag_seconds=_rounded(stats.estimated_lag_s())),
        flusher=FlusherState(alive=flusher_alive, sink_error=stats.sink_error or None,
                             stalled_seconds=round(stalled_s, 3)),
        uptime_seconds=round((now - started_us) / 1e6, 3), version=version, blob_store=blob_store,
        session_store=session_store)
    return (503 if status == "unhealthy" else 200), body


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
