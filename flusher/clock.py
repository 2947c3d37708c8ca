"""The healthy clock: time during which the flusher ran with the database
reachable. Orphan tasks wait for their session on this clock, so a long
database outage or a stopped service does not use up their orphan_grace
(the session may be in the spool behind the outage, or arrive after the
restart). It is kept in the spool and goes on from there after a restart.
"""

from __future__ import annotations

import time

# A step longer than this was a stall (the flusher was blocked, or the
# machine slept): it counts as this much at most.
MAX_STEP_S = 5.0


class HealthyClock:
    def __init__(self, start_us: int) -> None:
        self._us = start_us
        self._last = time.monotonic()
        self._was_healthy = False

    def tick(self, is_healthy: bool) -> None:
        """Called whenever the flusher learns the database's health: the time
        since the last tick counts when the database was healthy at both."""
        now = time.monotonic()
        if is_healthy and self._was_healthy:
            self._us += int(min(now - self._last, MAX_STEP_S) * 1_000_000)
        self._was_healthy = is_healthy
        self._last = now

    def now_us(self) -> int:
        return self._us
