"""The hash chain over stored audit events, and where each event goes.

Every stored event has a chain position `seq` (1, 2, ... in the order the
flusher stored them, which is spool order) and carries `prev_hash`, the hash
of the event before it, and `hash`, SHA-256 over prev_hash and every stored
column. Changing any column of any event, deleting one or reordering them
breaks the chain at that event (GET /audit/verify). Retention deletes the
oldest events of the chain only; `audit_chain` keeps where the chain now
starts and the hash the first remaining event must carry.

`pos` orders events newest first for reads and is the search indexes' row id:
occurred_at in microseconds * POS_SLOTS + a slot (seq modulo POS_SLOTS,
moved on if taken), so events of one microsecond still get distinct ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from msgspec import Struct

from core.audit_records import POS_SLOTS
from core.records import JSON_ENCODER
from core.times import db_text

GENESIS = "0" * 64
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


def link(rows: Sequence[Sequence[Any]], head: Head, taken: Callable[[Iterable[int]], set[int]]) -> list[list[Any]]:
    """New events (drain rows, in spool order, none stored yet) as stored rows
    that continue the chain after head; head is advanced. taken(positions)
    returns those already used by stored events."""
    wanted = [row[1] * POS_SLOTS + (head.last_seq + 1 + i) % POS_SLOTS for i, row in enumerate(rows)]
    used = taken(wanted)
    out = []
    for row, pos in zip(rows, wanted):
        pos = _free_slot(pos, row[1], used, taken)
        used.add(pos)
        head.last_seq += 1
        stored = stored_row(row, pos, head.last_seq)
        prev, head.last_hash = head.last_hash, event_hash(head.last_hash, stored)
        out.append([*stored, prev, head.last_hash])
    return out


def _free_slot(pos: int, occurred_us: int, used: set[int], taken: Callable[[Iterable[int]], set[int]]) -> int:
    """pos (already checked against stored events), or the next slot of its
    microsecond that no event uses. Rare: a collision needs events of one
    microsecond whose seqs are equal modulo POS_SLOTS."""
    base = occurred_us * POS_SLOTS
    for probe in range(POS_SLOTS):
        if pos not in used and (probe == 0 or not taken([pos])):
            return pos
        pos = base + (pos - base + 1) % POS_SLOTS
    raise ValueError(f"more than {POS_SLOTS} audit events occurred at one microsecond")


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
