"""The writer's queue, without threads or I/O: records encoded at put(),
numbered in put order, taken in chunks of at most batch_size and grouped
into one batch per kind, and acknowledged a whole chunk at a time, so
`flush()` is "wait until the acknowledged number reaches the one I saw".
Both writers (threads and asyncio) drive one Outbox under their own lock."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from persistence_api.translation import FieldProblem
from persistence_client.disk_buffer import DiskBuffer
from persistence_client.errors import ApiError, QueueFull, WriterClosed, api_error
from persistence_client.protocol import KINDS, RETRY_STATUSES, Backoff, Kind, batch_body, rejected_items

logger = logging.getLogger("persistence_client")


class Item(NamedTuple):  # a tuple: made once per put, so cheap to make matters
    seq: int
    kind: Kind
    payload: bytes  # the record's JSON, encoded at put()
    row: int | None  # its row in the disk buffer
    key: str | None = None  # with coalescing: the record's key


@dataclass
class Rejected:
    """Records the service refused for good (422, or 413 for one record too
    large): passed to on_rejected, never sent again."""
    kind: str  # "sessions", "tasks", "events"
    records: list[Any]  # as sent (decoded JSON)
    error: ApiError
    problems: list[FieldProblem]  # the 422's errors about these records


@dataclass
class WriterStats:
    put: int = 0
    acknowledged: int = 0  # records the service answered 202 for
    rejected: int = 0  # records passed to on_rejected
    retries: int = 0  # batches sent again after an error
    requests: int = 0
    queued: int = 0  # put, neither acknowledged nor rejected yet
    coalesced: int = 0  # not sent: a later put of the same key replaced them before they left


def log_rejected(rejected: Rejected) -> None:
    logger.error("the service refused %d %s for good (%s): %s", len(rejected.records), rejected.kind,
                 rejected.error, "; ".join(f"{p.field}: {p.message}" for p in rejected.problems[:10]))


@dataclass
class Outbox:
    max_queue: int
    buffer: DiskBuffer | None = None
    stats: WriterStats = field(default_factory=WriterStats)
    items: deque[Item] = field(default_factory=deque)
    next_seq: int = 1
    acked_seq: int = 0  # every record numbered up to here is acknowledged or rejected
    in_flight: int = 0
    chunk: list[Item] = field(default_factory=list)  # the one being sent, until done or given back
    latest: dict[tuple[int, str], int] = field(default_factory=dict)  # with coalescing: key -> newest seq queued
    chunk_coalesced: int = 0  # of the chunk being sent: records left behind (counted once it is done)
    oldest_at: float | None = None  # monotonic time the oldest queued record was put
    closed: bool = False

    def snapshot(self) -> WriterStats:
        """The counters, with put and queued as of now."""
        put = self.next_seq - 1
        return WriterStats(put=put, acknowledged=self.stats.acknowledged, rejected=self.stats.rejected,
                           retries=self.stats.retries, requests=self.stats.requests,
                           queued=put - self.acked_seq, coalesced=self.stats.coalesced)

    @property
    def full(self) -> bool:
        return len(self.items) + self.in_flight >= self.max_queue

    def add(self, kind: Kind, payload: bytes, key: str | None = None) -> int:
        # Runs once per put(): kept to a few operations.
        items = self.items
        if self.closed:
            raise WriterClosed("the writer is closed; the record was not taken")
        if len(items) + self.in_flight >= self.max_queue:
            raise QueueFull(f"{self.max_queue} records wait to be acknowledged (max_queue); the record was not "
                            "taken: the service is slow or unreachable")
        row = self.buffer.append(kind.code, payload) if self.buffer is not None else None
        seq = self.next_seq
        self.next_seq = seq + 1
        if not items:
            self.oldest_at = time.monotonic()
        items.append(Item(seq, kind, payload, row, key))
        if key is not None:
            self.latest[(kind.code, key)] = seq
        return seq

    def adopt(self) -> int:
        """Queue what a crashed process left in the disk buffer, before anything new."""
        if self.buffer is None:
            return 0
        count = 0
        for code, payload, row in self.buffer.adopt_orphans():
            if not self.items:
                self.oldest_at = time.monotonic()
            self.items.append(Item(self.next_seq, KINDS[code], payload, row))
            self.next_seq += 1
            count += 1
        return count

    def due(self, batch_size: int, flush_interval: float, flushing: bool) -> float | None:
        """0 when a chunk should go now, else how long to wait (None: nothing queued)."""
        if not self.items:
            return None
        if len(self.items) >= batch_size or flushing or self.closed:
            return 0.0
        assert self.oldest_at is not None
        return max(0.0, self.oldest_at + flush_interval - time.monotonic())

    def take(self, batch_size: int) -> tuple[list[Item], list[Item]]:
        """The next chunk, and those of its records to send: with coalescing,
        a record whose key was put again later stays behind (the later write
        replaces it whole at the service anyway)."""
        chunk = [self.items.popleft() for _ in range(min(batch_size, len(self.items)))]
        self.in_flight = len(chunk)
        self.chunk = chunk
        self.oldest_at = time.monotonic() if self.items else None
        if not self.latest:
            return chunk, chunk
        sendable = []
        self.chunk_coalesced = 0
        for item in chunk:
            if item.key is not None:
                ident = (item.kind.code, item.key)
                newest = self.latest.get(ident, item.seq)
                if newest > item.seq:
                    self.chunk_coalesced += 1
                    continue
                self.latest.pop(ident, None)
            sendable.append(item)
        return chunk, sendable

    def done(self, chunk: list[Item], acknowledged: int, rejected: int) -> None:
        self.in_flight = 0
        self.chunk = []
        self.acked_seq = chunk[-1].seq
        self.stats.coalesced += self.chunk_coalesced
        self.chunk_coalesced = 0
        self.stats.acknowledged += acknowledged
        self.stats.rejected += rejected
        rows = [item.row for item in chunk if item.row is not None]
        if self.buffer is not None and rows:
            self.buffer.remove_through(max(rows))

    def give_back(self, chunk: list[Item]) -> None:
        """A chunk not sent when the writer stopped: it stays first in line
        (and in the disk buffer, for the next process)."""
        self.in_flight = 0
        self.chunk = []
        self.chunk_coalesced = 0
        self.items.extendleft(reversed(chunk))


def record_key(kind: Kind, record: Any) -> str | None:
    """The record's key, for coalescing (None for appended kinds: every event is sent)."""
    if kind.key_field is None:
        return None
    value = record.get(kind.key_field) if isinstance(record, dict) else getattr(record, kind.key_field, None)
    return value if isinstance(value, str) else None


def report(on_rejected: Callable[[Rejected], None], rejected: Rejected) -> None:
    """The caller's callback; its failure is logged, never lets the records come back."""
    try:
        on_rejected(rejected)
    except Exception:
        logger.exception("on_rejected failed; the rejected records were:")
        log_rejected(rejected)


def by_kind(chunk: list[Item]) -> list[tuple[Kind, list[Item]]]:
    """One batch per kind, each in put order (kinds are independent at the service)."""
    groups: dict[int, list[Item]] = {}
    for item in chunk:
        groups.setdefault(item.kind.code, []).append(item)
    return [(KINDS[code], items) for code, items in groups.items()]


def split_rejected(kind: Kind, items: list[Item], error: ApiError,
                   on_rejected: Callable[[Rejected], None]) -> list[Item]:
    """After a 422: report the records it names and return the rest to send
    again (a batch is all or nothing at the service)."""
    bad = rejected_items(kind, error.errors, len(items))
    if bad is None:
        bad = set(range(len(items)))
    problems = error.errors
    records = [msgspec.json.decode(items[i].payload) for i in sorted(bad)]
    report(on_rejected, Rejected(kind.key, records, error, problems))
    return [item for i, item in enumerate(items) if i not in bad]


class Delivery:
    """Getting one kind's batch of a chunk accepted, as a state machine the
    writers drive: body() is what to POST next; on_answer() and
    on_transport_error() say how long to wait before the next attempt, or
    None once every record is acknowledged or rejected.

    A 422 removes the records it names (reported to on_rejected) and sends
    the rest; a 413 halves the batch (one record too large is rejected);
    408, 429, 5xx and broken connections are retried with backoff, honouring
    Retry-After. Other errors (a wrong API key, a wrong base URL) are retried
    too, logged as errors: they need an operator, and dropping records would
    be silent loss."""

    def __init__(self, kind: Kind, items: list[Item], backoff: Backoff, on_rejected: Callable[[Rejected], None],
                 stats: WriterStats) -> None:
        self.kind = kind
        self.parts: deque[list[Item]] = deque([items])
        self.backoff = backoff
        self.on_rejected = on_rejected
        self.stats = stats
        self.acknowledged = 0
        self.rejected = 0
        self.attempt = 0

    @property
    def finished(self) -> bool:
        return not self.parts

    def body(self) -> bytes:
        self.stats.requests += 1
        return batch_body(self.kind, [item.payload for item in self.parts[0]])

    def on_answer(self, status: int, content: bytes, headers: Any) -> float | None:
        part = self.parts[0]
        if 200 <= status < 300:
            self.parts.popleft()
            self.acknowledged += len(part)
            self.attempt = 0
            return None if not self.parts else 0.0
        error = api_error(status, content, headers)
        if status == 422:
            rest = split_rejected(self.kind, part, error, self.on_rejected)
            self.rejected += len(part) - len(rest)
            self.parts.popleft()
            if rest:
                self.parts.appendleft(rest)
            return None if not self.parts else 0.0
        if status == 413:
            if len(part) == 1:
                report(self.on_rejected, Rejected(self.kind.key, [msgspec.json.decode(part[0].payload)], error, []))
                self.rejected += 1
                self.parts.popleft()
                return None if not self.parts else 0.0
            half = len(part) // 2
            self.parts.popleft()
            self.parts.extendleft([part[half:], part[:half]])
            return 0.0
        level = logging.WARNING if status in RETRY_STATUSES else logging.ERROR
        logger.log(level, "sending %d %s: %s; trying again", len(part), self.kind.key, error)
        return self._retry(error.retry_after)

    def on_transport_error(self, exc: Exception) -> float:
        logger.warning("sending %d %s: %s; trying again", len(self.parts[0]), self.kind.key, exc)
        return self._retry(None)

    def _retry(self, retry_after: float | None) -> float:
        self.stats.retries += 1
        delay = self.backoff.delay(self.attempt, retry_after)
        self.attempt += 1
        return delay
