"""GET /stats reads whole indexes (counts by status, averages): on a million
tasks that is 0.15-1.4 s. Dashboards poll it every few seconds, so each query
process keeps its last answer and concurrent callers share one computation.
The answer is reused while the sink version is unchanged (nothing was
flushed since: it is still exact) or for query.stats_cache seconds at most
while writes go on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from query.views import Stats


class StatsCache:
    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._lock = asyncio.Lock()
        self._body: Stats | None = None
        self._computed = 0.0
        self._version: tuple[int, int] | None = None

    async def get(self, version: tuple[int, int],
                  compute: Callable[[], Awaitable[Stats]]) -> Stats:
        async with self._lock:
            is_fresh = version == self._version or time.monotonic() - self._computed < self._ttl_s
            if self._body is None or not is_fresh:
                self._body = await compute()
                self._computed = time.monotonic()
                self._version = version
            return self._body
