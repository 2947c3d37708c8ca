"""The /health answer of API.md, computed from the spool's counters and the
flusher's published heartbeat: it never touches the database, so it answers
in milliseconds even while the database hangs."""

from __future__ import annotations

from typing import Any

from core.times import iso_z, now_us
from wal.types import SpoolStats

# The flusher beats at least every second; this much silence means it is not running.
FLUSHER_STALE_US = 15_000_000


def stalled_seconds(stats: SpoolStats, now: int) -> float:
    """How long records have waited while the flusher wrote nothing, unless
    a running flusher reports the database down (an outage, not a stall); 0
    when nothing waits."""
    if not stats.oldest_received_us:
        return 0.0
    flusher_alive = now - stats.heartbeat_us < FLUSHER_STALE_US
    if flusher_alive and not stats.sink_healthy:
        return 0.0
    return max(0.0, (now - max(stats.last_flush_us, stats.oldest_received_us)) / 1e6)


def health_report(stats: SpoolStats, started_us: int, version: str,
                  stall_after_s: float) -> tuple[int, dict[str, Any]]:
    now = now_us()
    flusher_alive = now - stats.heartbeat_us < FLUSHER_STALE_US
    database_ok = flusher_alive and stats.sink_healthy
    stalled_s = stalled_seconds(stats, now)
    reason = None
    if stats.is_refusing:
        status, reason = "unhealthy", "the spool is full: writes are refused until the flusher frees space"
    elif stalled_s >= stall_after_s:
        status = "unhealthy"
        reason = (f"the flusher has written nothing for {stalled_s:.0f} s while "
                  f"{stats.pending_sessions + stats.pending_tasks} records wait"
                  + ("" if flusher_alive else " (the flusher is not running)"))
    elif not database_ok:
        status = "degraded"
        reason = stats.sink_error or ("the flusher is not running" if not flusher_alive else None)
    else:
        status = "healthy"
    body = {
        "status": status,
        "reason": reason,
        "database": "healthy" if database_ok else "unhealthy",
        "buffer": {
            "sessions_count": stats.pending_sessions,
            "tasks_count": stats.pending_tasks,
            "total_count": stats.pending_sessions + stats.pending_tasks,
            "capacity": stats.max_bytes,
            "bytes": stats.pending_bytes,
            "usage_percent": round(100 * stats.pending_bytes / stats.max_bytes, 2),
            "last_flush": iso_z(stats.last_flush_us) if stats.last_flush_us else None,
            "oldest_age_seconds": round((now - stats.oldest_received_us) / 1e6, 3) if stats.oldest_received_us else 0.0,
            "held_orphans": stats.held_tasks,
            "dead_letters": stats.dead_letters,
            "disk_free_bytes": stats.disk_free_bytes,
        },
        "flusher": {"alive": flusher_alive, "sink_error": stats.sink_error or None,
                    "stalled_seconds": round(stalled_s, 3)},
        "uptime_seconds": round((now - started_us) / 1e6, 3),
        "version": version,
    }
    return (200 if status != "unhealthy" else 503), body
