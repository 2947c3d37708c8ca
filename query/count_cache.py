"""Exact list totals without a COUNT per page.

Only the flusher writes the sink, and every commit it makes moves the spool's
sink version on (Spool.sink_version). A total counted at one version is
therefore still exact while the version is the same: page 2, 3, ... of a list
and every repeat of a popular filter reuse it, and the first read after a
flush counts again. A COUNT on a large filter reads a whole index range
(tens of ms on a million tasks), a version check is one SQLite read (~10 us).

A count may finish just after a flush that it already saw: it is then kept
under the old version only until the flusher records that commit, a few ms.
"""

from __future__ import annotations

from collections.abc import Hashable

MAX_ENTRIES = 4096


class CountCache:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._max_entries = max_entries
        self._version: tuple[int, int] | None = None
        self._totals: dict[Hashable, int] = {}

    def get(self, version: tuple[int, int], key: Hashable) -> int | None:
        if version != self._version:
            self._version, self._totals = version, {}
            return None
        return self._totals.get(key)

    def put(self, version: tuple[int, int], key: Hashable, total: int) -> None:
        if version != self._version:
            return  # counted before a flush this process has since seen: not kept
        if len(self._totals) >= self._max_entries:
            self._totals.clear()  # many distinct filters between two flushes: start over
        self._totals[key] = total
