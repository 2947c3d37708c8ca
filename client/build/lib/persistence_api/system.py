"""The /health answer of API.md: the service computes it (core.health) and a
client reads it."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct

from persistence_api.translation import IsoTime


class Buffer(Struct):
    sessions_count: int
    tasks_count: int
    events_count: int  # audit events
    total_count: int
    capacity: int
    bytes: int
    usage_percent: float
    last_flush: IsoTime | None
    oldest_age_seconds: float
    held_orphans: int
    dead_letters: int
    disk_free_bytes: int
    drain_rate: float  # rows/s the flusher drains while busy (last measured); 0 = not yet
    estimated_lag_seconds: float | None  # what waits, at that rate; past spool.max_lag writes get 429


class FlusherState(Struct):
    alive: bool
    sink_error: str | None
    stalled_seconds: float  # records have waited this long with nothing written (0 while it progresses)


class StoreHealth(Struct):
    store: str  # "file" or "s3" (files); "sqlite" or "redis" (login sessions)
    status: Literal["healthy", "unhealthy", "unknown"]  # unknown: no recent check (query process down)
    error: str | None = None
    checked_at: IsoTime | None = None


class Health(Struct):
    status: Literal["healthy", "degraded", "unhealthy"]
    reason: str | None  # why the status is not healthy
    database: Literal["healthy", "unhealthy"]
    buffer: Buffer
    flusher: FlusherState
    uptime_seconds: float
    version: str
    blob_store: StoreHealth | None = None  # the files' store, as the query process last found it
    session_store: StoreHealth | None = None  # the login sessions' store, likewise
