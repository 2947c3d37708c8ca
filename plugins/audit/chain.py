"""The hash chain over stored audit events, and where each event goes.

Every stored event has a chain position `seq` (1, 2, ... in the order the
flusher stored them, which is spool order) and carries `prev_hash`, the hash
of the event before it, and `hash`, SHA-256 over prev_hash and every stored
column. Changing any column of any event, deleting one or reordering them
breaks the chain at that event (GET /audit/verify). Retention deletes the
oldest events of the chain only; `audit_chain` keeps where the chain now
starts and the hash the first remaining event must carry.

`pos` orders events newest first for reads and is the search indexes' row id:
occurred_at's millisecond * 2**20 + a slot in that millisecond. The slot is
(the microsecond within it) * 1024 + seq modulo 1024, so events keep their
microsecond order; an event whose slot is taken (more than 1024 events of one
microsecond, e.g. times sent to the second) takes the next free slot of its
millisecond, which orders it up to a millisecond later among its neighbours.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from msgspec import Struct

from core.records import JSON_ENCODER
from core.times import db_text

GENESIS = "0" * 64
MS_SHIFT = 20  # 2**20 slots per millisecond: pos fits 64 bits from 1692 to 2248
US_SLOTS = 1024  # slots per microsecond before one spills over


def ms_start(us: int) -> int:
    """The first pos of the millisecond holding `us`."""
    return (us // 1000) << MS_SHIFT

# The columns of a stored event, in table order; the hash covers every one but the last two.
STORED_COLUMNS = ("pos", "seq", "event_id", "occurred_at", "actor_id", "actor_type", "action", "resource_type",
                  "resource_id", "outcome", "ip", "user_agent", "request_id", "message", "details", "stored_at",
                  "prev_hash", "hash")
HASHED = len(STORED_COLUMNS) - 2
# The row the drain hands the sink (plugins/tables.py): the event as accepted, before it has a place in the chain.
EVENT_ROW = ("event_id", "occurred_us", "actor_id", "actor_type", "action", "resource_type", "resource_id",
             "outcome", "ip", "user_agent", "request_id", "message", "details", "stored_us")


class Head(Struct):
    """The chain's ends: the last stored event, and where the chain starts after retention."""
    last_seq: int = 0
    last_hash: str = GENESIS
    first_seq: int = 1
    first_prev_hash: str = GENESIS


def event_hash(prev_hash: str, hashed: Sequence[Any]) -> str:
    """SHA-256 (hex) of the predecessor's hash and the stored columns (as text, or null)."""
    return hashlib.sha256(prev_hash.encode() + JSON_ENCODER.encode(list(hashed))).hexdigest()


def stored_row(row: Sequence[Any], pos: int, seq: int) -> list[Any]:
    """A drain row as stored, without its hashes: the times become DATETIME(6) text."""
    (event_id, occurred_us, actor_id, actor_type, action, resource_type, resource_id, outcome, ip, user_agent,
     request_id, message, details, stored_us) = row
    return [pos, seq, event_id, db_text(occurred_us), actor_id, actor_type, action, resource_type, resource_id,
            outcome, ip, user_agent, request_id, message, details, db_text(stored_us)]


def link(rows: Sequence[Sequence[Any]], head: Head,
         taken: Callable[[list[int] | range], set[int]]) -> list[list[Any]]:
    """New events (drain rows, in spool order, none stored yet) as stored rows
    that continue the chain after head; head is advanced. taken(positions)
    returns those already used by stored events (positions: a list, or a
    range of one millisecond's slots)."""
    wanted = [ms_start(row[1]) + (row[1] % 1000) * US_SLOTS + (head.last_seq + 1 + i) % US_SLOTS
              for i, row in enumerate(rows)]
    used = taken(wanted)
    loaded: set[int] = set()  # milliseconds whose used slots are all in `used`
    out = []
    for row, pos in zip(rows, wanted):
        if pos in used:
            pos = _free_slot(pos, row[1], used, loaded, taken)
        used.add(pos)
        head.last_seq += 1
        stored = stored_row(row, pos, head.last_seq)
        prev, head.last_hash = head.last_hash, event_hash(head.last_hash, stored)
        out.append([*stored, prev, head.last_hash])
    return out


def _free_slot(pos: int, occurred_us: int, used: set[int], loaded: set[int],
               taken: Callable[[list[int] | range], set[int]]) -> int:
    """The next slot after pos in its millisecond that no event uses."""
    base = ms_start(occurred_us)
    if base not in loaded:
        used |= taken(range(base, base + (1 << MS_SHIFT)))
        loaded.add(base)
    for slot in range(pos + 1, base + (1 << MS_SHIFT)):
        if slot not in used:
            return slot
    for slot in range(base, pos):
        if slot not in used:
            return slot
    raise ValueError(f"more than {1 << MS_SHIFT} audit events occurred in one millisecond")


class Verifier:
    """Walks stored events in chain order (rows of STORED_COLUMNS, times as
    DATETIME(6) text) and finds the first that does not fit: changed (its hash
    is not what its columns give), or not following its predecessor (one was
    deleted, inserted or reordered, or the chain does not start where
    retention left it). Counts the events whose occurred_at is in [start, end)."""

    def __init__(self, head: Head, start: str | None, end: str | None) -> None:
        self._expect_seq = head.first_seq
        self._expect_prev = head.first_prev_hash
        self._start, self._end = start, end
        self.checked = 0
        self.broken: str | None = None  # event_id
        self.detail: str | None = None

    def feed(self, rows: Iterable[Sequence[Any]]) -> bool:
        """False once the chain is broken (the rest need not be read)."""
        for row in rows:
            seq, event_id, occurred_at = row[1], row[2], row[3]
            in_range = (self._start is None or occurred_at >= self._start) and (self._end is None or occurred_at < self._end)
            problem = None
            if seq != self._expect_seq:
                problem = (f"chain position {seq} follows {self._expect_seq - 1}: events between them were removed"
                           if seq > self._expect_seq else f"chain position {seq} is out of order")
            elif row[HASHED] != self._expect_prev:
                problem = "it does not carry the hash of the event before it"
            elif row[HASHED + 1] != event_hash(row[HASHED], row[:HASHED]):
                problem = "its stored columns do not give its hash: it was changed after it was stored"
            if problem:
                self.broken, self.detail = event_id, f"event {event_id!r}: {problem}"
                return False
            self.checked += in_range
            self._expect_seq, self._expect_prev = seq + 1, row[HASHED + 1]
        return True

    def finish(self, head: Head) -> None:
        """After the last row: the chain must end where the head says."""
        if self.broken is None and self._expect_seq - 1 != head.last_seq:
            self.broken = ""
            self.detail = (f"the chain ends at position {self._expect_seq - 1} but {head.last_seq} events were "
                           f"stored: the newest events were removed")
