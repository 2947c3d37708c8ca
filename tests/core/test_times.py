from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

from core.times import db_text, from_us, iso_z, to_us


def test_db_text_matches_datetime_formatting(rng: random.Random) -> None:
    for _ in range(5000):
        us = rng.randrange(to_us(datetime(1, 1, 1, tzinfo=UTC)), to_us(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)))
        d = from_us(us)
        assert db_text(us) == f"{d.year:04d}-{d:%m-%d %H:%M:%S.%f}"


def test_offsets_are_converted_to_utc_and_naive_is_utc() -> None:
    plus8 = datetime(2025, 9, 30, 18, 15, 30, tzinfo=timezone(timedelta(hours=8)))
    assert iso_z(to_us(plus8)) == "2025-09-30T10:15:30.000000Z"
    assert to_us(datetime(2025, 9, 30, 10, 15, 30)) == to_us(plus8)
