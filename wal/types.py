"""The spool's value types and errors."""

from __future__ import annotations

import msgspec
from msgspec import Struct

FLUSHER_STALE_US = 15_000_000
RETRY_AFTER_FULL_S = 2
RETRY_AFTER_BUSY_S = 1


class SpoolError(Exception):
    """Base class of spool errors; the request that met one was not accepted."""

    error_code = "SPOOL_UNAVAILABLE"
    retry_after = RETRY_AFTER_BUSY_S
    status = 503


class SpoolFull(SpoolError):
    """Nothing was appended: the spool is at spool.max_bytes or the disk is full."""

    error_code = "SPOOL_FULL"

    def __init__(self, message: str, retry_after: int = RETRY_AFTER_FULL_S) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SpoolLagging(SpoolError):
    """Nothing was appended: the backlog would take longer than spool.max_lag to drain."""

    error_code = "SPOOL_LAGGING"
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SpoolBusy(SpoolError):
    """Nothing was appended: the spool lock was not granted within busy_timeout."""

    error_code = "SPOOL_BUSY"


class SpoolCorrupt(SpoolError):
    """The spool file cannot be read as a spool."""


class Append(Struct, frozen=True):
    kind: int
    payload: bytes
    record_count: int


class HeldTask(Struct, frozen=True):
    task_id: str
    session_id: str
    received_at_us: int
    held_since_us: int
    payload: bytes
    id: int = 0
    held_at_clock_us: int = 0  # the flusher's healthy clock when it was held (flusher/clock.py)


class DeadLetter(Struct, frozen=True):
    seq: int
    kind: int
    record_key: str
    received_at_us: int
    error: str
    payload: bytes
    failed_at_us: int = 0
    id: int = 0


class DrainCommit(Struct):
    """What one flusher cycle changes in the spool, applied atomically after
    the sink committed."""
    through_seq: int
    sessions_written: int = 0
    tasks_written: int = 0
    events_written: int = 0
    hold: list[HeldTask] = []
    release: list[int] = []
    dead: list[DeadLetter] = []
    results: list[tuple[int, bytes]] = []  # (command seq, JSON result)
    drop_held: list[tuple[str, int]] = []  # (session_id, received before): orphans of a deleted session
    drain_rate: float | None = None  # rows/s measured on busy cycles; None: unchanged


class Totals(Struct, frozen=True):
    sessions_written: int
    tasks_written: int
    tasks_held: int  # orphans set aside until their session exists
    records_dead: int  # records moved to the dead letters

    def since(self, before: Totals) -> Totals:
        return Totals(*(a - b for a, b in zip(msgspec.structs.astuple(self), msgspec.structs.astuple(before))))


class Waiting(Struct, frozen=True):
    records: int
    oldest_received_us: int  # 0 when nothing waits
    is_flush_requested: bool
    first_seq: int = 0  # of the oldest entry; 0 when nothing waits


class SpoolStats(Struct, frozen=True):
    pending_sessions: int
    pending_tasks: int
    pending_bytes: int
    max_bytes: int
    last_seq: int
    flushed_seq: int
    last_flush_us: int
    oldest_received_us: int  # 0 when empty
    heartbeat_us: int
    sink_healthy: bool
    sink_error: str
    held_tasks: int
    dead_letters: int
    sessions_written: int
    tasks_written: int
    is_refusing: bool  # full: a batch was refused for space and nothing has been trimmed since, or no disk left
    disk_free_bytes: int = 0
    tasks_held: int = 0  # totals since the spool was created
    records_dead: int = 0
    drain_rate: float = 0.0  # rows/s while busy; 0 = not measured yet
    pending_events: int = 0  # audit events waiting

    @property
    def pending_records(self) -> int:
        return self.pending_sessions + self.pending_tasks + self.pending_events

    def estimated_lag_s(self) -> float | None:
        """How long the records waiting now would take to drain, at the last measured rate."""
        if not self.drain_rate:
            return None
        return self.pending_records / self.drain_rate

    def is_flusher_alive(self, now_us: int) -> bool:
        """The flusher beats at least every second; FLUSHER_STALE_US of silence means it is not running."""
        return now_us - self.heartbeat_us < FLUSHER_STALE_US

    def stalled_seconds(self, now_us: int) -> float:
        """How long records have waited while the flusher wrote nothing, unless
        a running flusher reports the database down (an outage, not a stall); 0
        when nothing waits."""
        if not self.oldest_received_us or (self.is_flusher_alive(now_us) and not self.sink_healthy):
            return 0.0
        return max(0.0, (now_us - max(self.last_flush_us, self.oldest_received_us)) / 1e6)
