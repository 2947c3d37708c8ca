"""Dead letters: list, count, retry, purge. Records the database refused for
good wait in the spool's dead_letters table (see FORMAT.md) until an operator
retries or purges them.

A retry re-appends each record as a new spool entry of its kind (a one-record
batch) and deletes its dead letter in the same transaction: a crash leaves
either the dead letter or the entry, never both and never neither. Retried
entries go through the flusher like any write, in dead-letter id order.

A retried record keeps its version: when the client sent no updated_at, the
entry carries the time the record was first accepted as its updated_at, so a
newer write of the same key that reached the database meanwhile still wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from msgspec import Struct

from core.kinds import BY_ENTRY_KIND, RecordKind
from core.records import COMMAND_TYPES
from core.times import from_us
from wal.spool import Spool
from wal.types import Append, DeadLetter

RETRY_CHUNK = 500  # dead letters per retry transaction: bounds memory and lock time


class Skipped(Struct, frozen=True):
    id: int
    reason: str


class RetryReport(Struct):
    retried: list[int]  # dead-letter ids now back in the spool, in order
    skipped: list[Skipped]  # still dead letters: their payload cannot be decoded as records
    not_found: list[int]  # ids asked for that are not dead letters (already retried or purged)


def count(spool: Spool) -> int:
    """How many dead letters there are now."""
    return spool.dead_letter_count()


def page(spool: Spool, limit: int, after_id: int = 0) -> list[DeadLetter]:
    """Up to limit dead letters with id > after_id, in id order (oldest first)."""
    return spool.dead_letters(limit=limit, after_id=after_id)


def purge(spool: Spool, ids: Sequence[int] | None = None) -> int:
    """Delete the given dead letters (all when ids is None); how many were deleted."""
    return spool.purge_dead_letters(None if ids is None else list(ids))


def retry(spool: Spool, ids: Sequence[int] | None = None) -> RetryReport:
    """Move the given dead letters (all when ids is None) back into the spool,
    in id order. Each chunk of RETRY_CHUNK is one transaction that reads the
    dead letters, appends their entries and deletes them. Raises SpoolFull
    (that chunk and the ones after it stay dead letters) when the entries
    would pass spool.max_bytes."""
    report = RetryReport([], [], [])
    if ids is None:
        after = 0
        while True:
            found = _retry_chunk(spool, report, None, after)
            if not found:
                return report
            after = found[-1]
    wanted = sorted(set(ids))
    for start in range(0, len(wanted), RETRY_CHUNK):
        part = wanted[start:start + RETRY_CHUNK]
        found = _retry_chunk(spool, report, part, 0)
        report.not_found.extend(sorted(set(part) - set(found)))
    return report


def _retry_chunk(spool: Spool, report: RetryReport, ids: list[int] | None, after: int) -> list[int]:
    """One transaction; the ids of the dead letters it found, in order."""
    found, requeued, kept = spool.requeue_dead_letters(ids, after, RETRY_CHUNK, _entry)
    report.retried.extend(requeued)
    report.skipped.extend(Skipped(i, reason) for i, reason in kept)
    return found


def _entry(dead: DeadLetter) -> Append | str:
    """The spool entry that replays this dead letter, or why there is none."""
    if dead.kind in COMMAND_TYPES:  # a command the database refused: replayed as it was
        return Append(dead.kind, dead.payload, 1)
    kind = BY_ENTRY_KIND.get(dead.kind)
    if kind is None:
        return f"kind {dead.kind} is not a record kind"
    records = _records(kind, dead.payload)
    if isinstance(records, str):
        return f"the payload cannot be replayed ({records}); purge it, or fix and resend it"
    version = from_us(dead.received_at_us)
    batch = [_versioned(r, version) for r in records]
    return Append(dead.kind, kind.encode_batch(batch), len(batch))


def _records(kind: RecordKind, payload: bytes) -> Sequence[Any] | str:
    """One record (a refused row, an expired orphan), or the records of a whole
    entry that was dead-lettered because it could not be decoded; else the
    decoder's complaint."""
    try:
        return [kind.decode_record(payload)]
    except msgspec.DecodeError as exc:
        as_record = str(exc)
    try:
        return kind.decode(payload)
    except msgspec.DecodeError as exc:
        return f"as a record: {as_record}; as a batch: {exc}"


def _versioned(record: Any, version: datetime) -> Any:
    if getattr(record, "updated_at", None) is not None or not hasattr(record, "updated_at"):
        return record
    return msgspec.structs.replace(record, updated_at=version)
