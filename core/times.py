"""Time conversions. Versions and timestamps travel as integer microseconds
since the Unix epoch (UTC); sinks store them as DATETIME(6)-style text."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_us() -> int:
    return time.time_ns() // 1000


def to_us(value: datetime) -> int:
    """A datetime as UTC microseconds; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def db_text(us: int) -> str:
    """'YYYY-MM-DD HH:MM:SS.ffffff' in UTC: a MySQL DATETIME(6) literal that also
    sorts correctly as SQLite text."""
    return from_us(us).strftime("%Y-%m-%d %H:%M:%S.%f")


def iso_z(us: int) -> str:
    """ISO 8601 in UTC with a Z suffix, as the API answers."""
    text = from_us(us).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")
