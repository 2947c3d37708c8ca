"""Capped exponential backoff with jitter for transient sink errors."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self._initial = initial_s
        self._max = max_s
        self._next = initial_s
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The delay before the next attempt; doubles up to the cap."""
        delay = self._next
        self._next = min(self._next * 2, self._max)
        return delay * self._rng.uniform(0.8, 1.0)

    def reset(self) -> None:
        self._next = self._initial
