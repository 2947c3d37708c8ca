"""GET /stats reads whole indexes (counts by status, averages): on millions
of tasks that is a second or more. Dashboards poll it every few seconds, so
each query process keeps the last answer for query.stats_cache seconds and
concurrent callers share one computation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from core.times import iso_z, now_us


class StatsCache:
    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._lock = asyncio.Lock()
        self._body: dict[str, Any] | None = None
        self._computed = 0.0

    async def get(self, compute: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        async with self._lock:
            if self._body is None or time.monotonic() - self._computed >= self._ttl_s:
                body = await compute()
                self._body = {**body, "computed_at": iso_z(now_us())}
                self._computed = time.monotonic()
            return self._body
