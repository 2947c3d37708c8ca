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

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from msgspec import Struct

from core.records import COMMAND_TYPES, JSON_ENCODER, KIND_SESSIONS, KIND_TASKS, Session, SessionBatch, Task, TaskBatch
from core.times import from_us, now_us
from wal.spool import Spool, _rollback
from wal.types import DeadLetter, SpoolFull

RETRY_CHUNK = 500  # dead letters per retry transaction: bounds memory and lock time
_RECORD_DECODERS: dict[int, msgspec.json.Decoder[Any]] = {
    KIND_SESSIONS: msgspec.json.Decoder(Session), KIND_TASKS: msgspec.json.Decoder(Task)}
_BATCH_DECODERS: dict[int, msgspec.json.Decoder[Any]] = {
    KIND_SESSIONS: msgspec.json.Decoder(SessionBatch), KIND_TASKS: msgspec.json.Decoder(TaskBatch)}


class Skipped(Struct, frozen=True):
    id: int
    reason: str


class RetryReport(Struct):
    retried: list[int]  # dead-letter ids now back in the spool, in order
    skipped: list[Skipped]  # still dead letters: their payload cannot be decoded as records
    not_found: list[int]  # ids asked for that are not dead letters (already retried or purged)


class _Entry(Struct, frozen=True):
    kind: int
    payload: bytes
    record_count: int


def count(spool: Spool) -> int:
    """How many dead letters there are now."""
    return _conn(spool).execute("SELECT count(*) FROM dead_letters").fetchone()[0]


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
        after: int | None = 0
        while after is not None:
            chunk = _retry_chunk(spool, report, "id > ? ORDER BY id LIMIT ?", [after, RETRY_CHUNK])
            after = chunk[-1] if chunk else None
        return report
    wanted = sorted(set(ids))
    for start in range(0, len(wanted), RETRY_CHUNK):
        part = wanted[start:start + RETRY_CHUNK]
        found = _retry_chunk(spool, report, f"id IN ({','.join('?' * len(part))}) ORDER BY id", part)
        report.not_found.extend(sorted(set(part) - set(found)))
    return report


def _retry_chunk(spool: Spool, report: RetryReport, where: str, params: list[int]) -> list[int]:
    """One transaction; the ids of the dead letters it found, in order."""
    conn = _conn(spool)
    spool.begin_write()
    try:
        chunk = [DeadLetter(*row) for row in conn.execute(
            "SELECT seq, kind, record_key, received_at_us, error, payload, failed_at_us, id"
            f" FROM dead_letters WHERE {where}", params).fetchall()]
        entries: list[tuple[int, _Entry]] = []
        for dead in chunk:
            entry = _entry(dead)
            if isinstance(entry, str):
                report.skipped.append(Skipped(dead.id, entry))
            else:
                entries.append((dead.id, entry))
        _move(conn, entries, spool._settings.max_bytes)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    report.retried.extend(i for i, _ in entries)
    return [d.id for d in chunk]


def _entry(dead: DeadLetter) -> _Entry | str:
    """The spool entry that replays this dead letter, or why there is none."""
    if dead.kind in COMMAND_TYPES:  # a command the database refused: replayed as it was
        return _Entry(dead.kind, dead.payload, 1)
    if dead.kind not in _RECORD_DECODERS:
        return f"kind {dead.kind} is not a record kind"
    records = _records(dead.kind, dead.payload)
    if isinstance(records, str):
        return f"the payload cannot be replayed ({records}); purge it, or fix and resend it"
    version = from_us(dead.received_at_us)
    batch = [_versioned(r, version) for r in records]
    body = SessionBatch(batch) if dead.kind == KIND_SESSIONS else TaskBatch(batch)  # type: ignore[arg-type]
    return _Entry(dead.kind, JSON_ENCODER.encode(body), len(batch))


def _records(kind: int, payload: bytes) -> list[Session] | list[Task] | str:
    """One record (a refused row, an expired orphan), or the records of a whole
    entry that was dead-lettered because it could not be decoded; else the
    decoder's complaint."""
    try:
        return [_RECORD_DECODERS[kind].decode(payload)]
    except msgspec.DecodeError as exc:
        as_record = str(exc)
    try:
        batch = _BATCH_DECODERS[kind].decode(payload)
    except msgspec.DecodeError as exc:
        return f"as a record: {as_record}; as a batch: {exc}"
    return batch.sessions if isinstance(batch, SessionBatch) else batch.tasks


def _versioned(record: Session | Task, version: datetime) -> Session | Task:
    if record.updated_at is not None:
        return record
    return msgspec.structs.replace(record, updated_at=version)


def _move(conn: sqlite3.Connection, entries: list[tuple[int, _Entry]], max_bytes: int) -> None:
    """Inside the caller's transaction: append the entries and delete their
    dead letters, keeping the state counters as Spool.append_many does."""
    if not entries:
        return
    clock, live_bytes = conn.execute("SELECT clock_us, live_bytes FROM state").fetchone()
    size = sum(len(e.payload) for _, e in entries)
    if live_bytes + size > max_bytes:
        raise SpoolFull(f"spool holds {live_bytes} bytes, limit {max_bytes}: the retry ({size} bytes) must wait")
    received = max(now_us(), clock + 1)
    added = {KIND_SESSIONS: 0, KIND_TASKS: 0}
    for offset, (_, entry) in enumerate(entries):
        conn.execute("INSERT INTO entries (kind, received_at_us, record_count, payload) VALUES (?, ?, ?, ?)",
                     (entry.kind, received + offset, entry.record_count, entry.payload))
        if entry.kind in added:  # commands are not counted as records waiting
            added[entry.kind] += entry.record_count
    conn.execute("UPDATE state SET clock_us = ?, live_bytes = live_bytes + ?, live_sessions = live_sessions + ?,"
                 " live_tasks = live_tasks + ?",
                 (received + len(entries) - 1, size, added[KIND_SESSIONS], added[KIND_TASKS]))
    conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(i,) for i, _ in entries])


def _conn(spool: Spool) -> sqlite3.Connection:
    # wal/ owns the spool's SQL: this module works on Spool's own connection
    # (private to the package), so its transactions follow the same rules.
    return spool._conn
