"""Time conversions. Versions and timestamps travel as integer microseconds
since the Unix epoch (UTC); sinks store them as DATETIME(6)-style text."""

from __future__ import annotations

import functools
import time

from persistence_api.times import from_us, to_us  # noqa: F401 (defined once there, shared with the client)

_GMTIME_MAX_S = 253_402_300_800  # 10000-01-01


def now_us() -> int:
    return time.time_ns() // 1000


@functools.lru_cache(maxsize=4096)  # records of one request share their acceptance time
def db_text(us: int) -> str:
    """'YYYY-MM-DD HH:MM:SS.ffffff' in UTC: a MySQL DATETIME(6) literal that also
    sorts correctly as SQLite text."""
    seconds, micros = divmod(us, 1_000_000)
    if 0 <= seconds < _GMTIME_MAX_S:
        t = time.gmtime(seconds)
        return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (t[0], t[1], t[2], t[3], t[4], t[5], micros)
    d = from_us(us)  # before 1970
    return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (d.year, d.month, d.day, d.hour, d.minute, d.second, micros)


def iso_z(us: int) -> str:
    """ISO 8601 in UTC with a Z suffix, as the API answers."""
    text = from_us(us).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")
