"""One drain cycle, whole: read the next entries, coalesce them, hold orphan
tasks, write to the sink in one transaction, trim the spool (commit_drain),
checkpoint it, count what was done. A crash anywhere before commit_drain
replays the same entries; the sink's versioned upserts make the replay
harmless. The loop (flusher/loop.py) only decides when to run a cycle and
how long to back off after one failed.

No record can stop the drain: a record that cannot be decoded, converted to a
row or written (the database refuses it, or the attempt raises an error
nobody expected) is set apart as a dead letter with the error's text, and the
rest of the batch goes on. After a cycle failed for a reason nobody foresaw
(failed()), the entries it read are drained one at a time, and one that fails
alone is set aside as a dead letter. Only a TransientSinkError (the database
is away) or a spool error leaves the entries in place, to be retried in order.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from msgspec import Struct

from core.kinds import BY_ENTRY_KIND, BY_NAME, KINDS, RecordKind
from core.records import COMMAND_TYPES, JSON_ENCODER, KIND_ARCHIVE, Archived, SpoolEntry
from core.settings import FlushSettings
from core.times import now_us
from core import metrics
from flusher.coalesce import Coalesced, Item, coalesce, merge
from flusher.commands import apply_command, encode_result, failed
from flusher.writers import Writers
from plugins import RejectedRows, Sink, TransientSinkError
from plugins.tables import TABLE_OF, Row, Table, TableRows
from wal import Spool
from wal.types import Append, DeadLetter, DrainCommit, HeldTask

if TYPE_CHECKING:
    from archive.runner import Archiver

logger = logging.getLogger(__name__)

RATE_SAMPLE_MIN_RECORDS = 500  # a cycle with fewer records says little about the drain rate
RATE_SMOOTHING = 0.3  # weight of the newest cycle in the moving average
KNOWN_PARENTS_MAX = 200_000  # cache of parent keys seen in the sink, per kind; cleared when full
# The held table keeps records of the one kind that names a parent (tasks):
# a second such kind needs the held table to say which kind a row is.
(HELD_KIND,) = [kind for kind in KINDS if kind.parent_field]
Group = tuple[Table, list[tuple[Item, Row]]]  # one table's items with their rows, sorted by key


class DrainReport(Struct):
    """What a cycle did, for the metrics."""
    written: dict[str, int]  # rows written, by kind name
    dead: dict[str, int]  # records dead-lettered, by kind name ("command" for a command)
    rejected: int = 0  # rows the database refused for good (counted in dead too)


class Drainer:
    def __init__(self, spool: Spool, sink: Sink, settings: FlushSettings, clock: Callable[[], int],
                 archiver: Archiver | None = None, writers: Writers | None = None) -> None:
        self._archiver = archiver
        self._spool = spool
        self._sink = sink
        self._writers = writers or Writers([sink])  # the rows go through these; the rest through sink
        self._settings = settings
        self._clock = clock  # the healthy clock (flusher/clock.py): orphans wait on it
        self._known: dict[str, set[str]] = {}  # parent kind name -> keys seen stored
        self._isolate_through = 0  # drain one entry at a time up to this seq (after a failed cycle)
        self._last_read_seq = 0
        self._rate = 0.0  # rows/s of busy cycles (moving average), published with each commit

    def drain_once(self, held: list[HeldTask] | None = None) -> DrainReport:
        """One cycle over the next entries (at most flush.batch_rows records per writer;
        one entry alone after a failed cycle), with these held tasks. Raises
        TransientSinkError or sqlite3.Error with nothing trimmed."""
        started = time.perf_counter()
        entries = self._spool.read(0, self._settings.batch_rows * self._writers.count)
        if entries and entries[0].seq <= self._isolate_through:
            report = self._drain_alone(entries[0])
        else:
            self._last_read_seq = entries[-1].seq if entries else self._last_read_seq
            with metrics.FLUSH_DURATION.time():
                report = self._drain(entries, held or [])
            self._measure(sum(e.record_count for e in entries), time.perf_counter() - started)
        # Short of disk: truncate the WAL (its size is what ingest must keep free) so appends resume.
        self._spool.checkpoint(truncate=self._spool.is_short_of_disk())
        _count(report)
        return report

    def _measure(self, records: int, seconds: float) -> None:
        """The drain rate ingest's back-pressure by time works from: measured on
        cycles with enough records to say something (a nearly empty cycle
        measures the wait for work, not the drain)."""
        if records < RATE_SAMPLE_MIN_RECORDS or seconds <= 0:
            return
        sample = records / seconds
        self._rate = sample if not self._rate else (1 - RATE_SMOOTHING) * self._rate + RATE_SMOOTHING * sample

    def failed(self) -> int:
        """A cycle raised an error nobody foresaw: drain the entries it read one
        at a time from now on, to find the one that fails. Returns the last seq
        concerned."""
        self._isolate_through = max(self._isolate_through, self._last_read_seq)
        return self._isolate_through

    def _drain_alone(self, entry: SpoolEntry) -> DrainReport:
        """One entry by itself; if it fails, for any reason but the database
        or the spool being away, it is set aside as a dead letter."""
        try:
            return self._drain([entry], [])
        except (TransientSinkError, sqlite3.Error):
            raise
        except Exception as exc:  # this entry alone fails: the cause is in it
            logger.exception("spool entry %d fails on its own", entry.seq)
            return self.set_aside(entry, exc)

    def _drain(self, entries: list[SpoolEntry], held: list[HeldTask]) -> DrainReport:
        """Write these entries (and the held tasks passed back in) to the sink,
        then trim them from the spool."""
        if entries and entries[0].kind in COMMAND_TYPES:
            return self._apply_command(entries[0])
        batch = coalesce(entries)
        dead = [DeadLetter(b.entry.seq, b.entry.kind, b.record_key, b.entry.received_at_us, b.error,
                           b.payload or b.entry.payload) for b in batch.bad]
        for item in self._held_items(held, dead):
            merge(batch.of(HELD_KIND), item)
        groups: list[Group] = []
        orphans: list[Item] = []
        for kind in KINDS:  # parents first, so a child finds its parent in this very batch
            # Upserts in key order (locks taken in one order); appends in spool order (the chain's order).
            items = list(batch.of(kind).values()) if kind.write == "append" else sorted(batch.of(kind).values(), key=_key)
            if kind.parent_field:
                items, waiting = self._separate_orphans(kind, items, batch)
                orphans.extend(waiting)
            groups.append((TABLE_OF[kind.name], self._rows(TABLE_OF[kind.name], items, dead)))
        rejected = self._write_isolating([g for g in groups if g[1]])
        dead.extend(rejected)
        for table, pairs in groups:
            if any(k.parent_kind == table.kind.name for k in KINDS):
                self._remember(table.kind, {i.key for i, _ in pairs})
        orphans, expired = self._expire(orphans, {h.id: h for h in held})
        dead.extend(expired)
        now, clock = now_us(), self._clock()
        hold = [HeldTask(i.key, HELD_KIND.parent(i.record), i.received_at_us, now, _encode(i),
                         held_at_clock_us=clock) for i in orphans if not i.held_id]
        # An orphan already held stays where it is; released ones leave the table.
        still_held = {i.held_id for i in orphans}
        release = [h.id for h in held if h.id not in still_held]
        written = {table.kind.name: len(pairs) - _count_dead(rejected, table.kind) for table, pairs in groups}
        change = DrainCommit(
            through_seq=entries[-1].seq if entries else 0,
            sessions_written=written.get("session", 0), tasks_written=written.get("task", 0),
            events_written=written.get("audit_event", 0),
            hold=hold, release=release, dead=dead, drain_rate=self._rate or None)
        self._spool.commit_drain(change)
        return DrainReport(written, _dead_by_kind(dead), len(rejected))

    def drain_held(self, held: list[HeldTask]) -> DrainReport:
        """Held tasks alone (between batches): those whose session is now stored are written."""
        report = self._drain([], held)
        _count(report)
        return report

    def set_aside(self, entry: SpoolEntry, error: BaseException) -> DrainReport:
        """Dead-letter a whole entry that made a drain cycle fail in a way no
        record-level isolation caught (a bug): the spool moves on past it."""
        text = _error_text(error)
        logger.error("spool entry %d (kind %d) set aside as a dead letter after %s",
                     entry.seq, entry.kind, type(error).__name__)
        results = [(entry.seq, encode_result(failed(entry, text)))] if entry.kind in COMMAND_TYPES else []
        dead = [DeadLetter(entry.seq, entry.kind, "", entry.received_at_us, text, entry.payload)]
        self._spool.commit_drain(DrainCommit(through_seq=entry.seq, results=results, dead=dead))
        return DrainReport({}, _dead_by_kind(dead))

    def _apply_command(self, entry: SpoolEntry) -> DrainReport:
        try:
            applied = apply_command(entry, self._sink, self._archiver)
        except TransientSinkError:
            raise
        except Exception as exc:  # refused for good, or a bug: the caller gets "failed", the spool moves on
            if not isinstance(exc, RejectedRows):
                logger.exception("command at seq %d failed", entry.seq)
            return self.set_aside(entry, exc)
        drop_held = []
        if applied.deleted_session is not None:
            self._known.get(HELD_KIND.parent_kind or "", set()).discard(applied.deleted_session)
            drop_held.append((applied.deleted_session, entry.received_at_us))
        self._spool.commit_drain(DrainCommit(through_seq=entry.seq, results=[(entry.seq, encode_result(applied))],
                                             drop_held=drop_held))
        if isinstance(applied.result, Archived) and applied.result.more:  # bounded runs: the next one continues
            self._spool.append_many([Append(KIND_ARCHIVE, entry.payload, 1)])
        return DrainReport({}, {})

    def _held_items(self, held: list[HeldTask], dead: list[DeadLetter]) -> list[Item]:
        """Held records come back as items, to be checked against the sink again."""
        items = []
        for h in held:
            try:
                record = HELD_KIND.decode_record(h.payload)
                version = HELD_KIND.version(record, h.received_at_us)
            except (msgspec.DecodeError, ValueError, OverflowError) as exc:
                dead.append(DeadLetter(0, HELD_KIND.entry_kind, h.task_id, h.received_at_us,
                                       f"invalid held record: {exc}", h.payload))
                continue
            items.append(Item(h.task_id, version, 0, h.received_at_us, record, h.id))
        return items

    def _expire(self, orphans: list[Item], held: dict[int, HeldTask]) -> tuple[list[Item], list[DeadLetter]]:
        """Orphans still without their session after orphan_grace of healthy
        time (the sink reachable, the flusher running) become dead letters."""
        grace_us = int(self._settings.orphan_grace * 1_000_000)
        clock = self._clock()
        keep, expired = [], []
        for item in orphans:
            waited = held.get(item.held_id)
            if waited is not None and clock - waited.held_at_clock_us >= grace_us:
                expired.append(DeadLetter(
                    0, HELD_KIND.entry_kind, item.key, item.received_at_us,
                    f"orphan: {HELD_KIND.parent_kind} {HELD_KIND.parent(item.record)!r} not found within orphan_grace "
                    f"({self._settings.orphan_grace:g} s of the database being reachable)", _encode(item)))
            else:
                keep.append(item)
        return keep, expired

    def _separate_orphans(self, kind: RecordKind, items: list[Item], batch: Coalesced) -> tuple[list[Item], list[Item]]:
        """(writable, orphans): items whose parent is in this batch or stored, and the others."""
        assert kind.parent_kind is not None
        parent = BY_NAME[kind.parent_kind]
        known = self._known.setdefault(parent.name, set())
        in_batch = batch.of(parent)
        parent_of = kind.parent_of
        keyed = [(i, parent_of(i.record)) for i in items]
        unknown = {p for _, p in keyed if p not in in_batch and p not in known}
        if unknown:
            found = self._sink.existing(TABLE_OF[parent.name], unknown)
            self._remember(parent, found)
            unknown -= found
        writable = [i for i, p in keyed if p not in unknown]
        orphans = [i for i, p in keyed if p in unknown]
        return writable, orphans

    def _remember(self, kind: RecordKind, keys: set[str]) -> None:
        known = self._known.setdefault(kind.name, set())
        if len(known) + len(keys) > KNOWN_PARENTS_MAX:
            known.clear()
        known.update(keys)

    def _rows(self, table: Table, items: list[Item], dead: list[DeadLetter]) -> list[tuple[Item, Row]]:
        """Each item with its row; an item whose conversion fails becomes a dead letter."""
        rows = []
        for item in items:
            try:
                rows.append((item, table.to_row(item.record, item.version, item.first_received_us)))
            except Exception as exc:  # any conversion bug stays with its record
                logger.error("record %s cannot be converted to a row (%s); dead-lettered", item.key,
                             type(exc).__name__)
                dead.append(_dead(table.kind, item, _error_text(exc)))
        return rows

    def _write_isolating(self, groups: list[Group]) -> list[DeadLetter]:
        """Write in one transaction; if the database refuses the batch for
        good, or writing it raises an unexpected error, split it until the
        failing rows are alone and dead-letter them."""
        if not groups:
            return []
        try:
            deleted = self._writers.write([TableRows(table, [row for _, row in pairs],
                                                  [item.received_at_us for item, _ in pairs])
                                        for table, pairs in groups])
            if deleted:  # deleted (perhaps through another node) since seen stored: look again next time
                self._known.setdefault(HELD_KIND.parent_kind or "", set()).difference_update(deleted)
            return []
        except TransientSinkError:
            raise
        except Exception as exc:  # refused for good, or a bug met by some row: isolate it
            if len(groups) == 1 and len(groups[0][1]) == 1:
                table, ((item, _),) = groups[0]
                if isinstance(exc, RejectedRows):
                    logger.warning("record %s refused by the database (%s); dead-lettered", item.key, exc.code)
                else:
                    logger.error("record %s could not be written (%s); dead-lettered", item.key,
                                 type(exc).__name__)
                return [_dead(table.kind, item, exc.reason if isinstance(exc, RejectedRows) else _error_text(exc))]
        if len(groups) > 1:
            return [letter for group in groups for letter in self._write_isolating([group])]
        table, pairs = groups[0]
        half = len(pairs) // 2
        return self._write_isolating([(table, pairs[:half])]) + self._write_isolating([(table, pairs[half:])])


def _key(item: Item) -> str:
    return item.key


def _encode(item: Item) -> bytes:
    return JSON_ENCODER.encode(item.record)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _dead(kind: RecordKind, item: Item, reason: str) -> DeadLetter:
    return DeadLetter(item.seq, kind.entry_kind, item.key, item.received_at_us, reason, _encode(item))


def _count_dead(dead: list[DeadLetter], kind: RecordKind) -> int:
    return sum(1 for d in dead if d.kind == kind.entry_kind)


def _dead_by_kind(dead: list[DeadLetter]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for letter in dead:
        kind = BY_ENTRY_KIND.get(letter.kind)
        name = kind.name if kind else "command"
        counts[name] = counts.get(name, 0) + 1
    return counts


def _count(report: DrainReport) -> None:
    metrics.FLUSH_BATCHES.inc()
    for kind, rows in report.written.items():
        metrics.FLUSH_ROWS.labels(kind).inc(rows)
    if report.rejected:  # one error per cycle, as for transient ones; the rows are counted as dead letters
        metrics.SINK_ERRORS.labels("permanent").inc()
    for kind, letters in report.dead.items():
        metrics.DEAD_LETTERED.labels(kind).inc(letters)
