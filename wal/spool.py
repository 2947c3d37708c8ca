"""Spool: append, read in order, trim, hold orphans. Layout and invariants
are in wal/FORMAT.md. The connection and the write primitives are in
wal/base.py, the counters in wal/status.py, the dead letters in
wal/dead_letter_table.py.

A Spool object owns one SQLite connection and must be used from one thread
at a time. Every process (and every thread that writes) opens its own.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from core.records import COMMAND_TYPES, KIND_AUDIT_EVENTS, KIND_SESSIONS, KIND_TASKS, SpoolEntry
from core.settings import SpoolSettings
from core.times import now_us
from wal import schema
from wal.base import LOCK_POLL_S, append_error, is_busy
from wal.dead_letter_table import DeadLetterTable
from wal.status import SpoolStatus
from wal.restoring import unfinished_restore
from wal.types import (FLUSHER_STALE_US, Append, DrainCommit, HeldTask, SpoolBusy, SpoolCorrupt, SpoolError,
                       SpoolFull, SpoolLagging, Waiting)

logger = logging.getLogger(__name__)

RESULTS_KEPT_US = 3_600_000_000  # a command's result is kept an hour for the caller to read
_PAGE_SLACK = 1.1  # a payload takes about 10% more in pages and WAL frames
_MIB = 1024 * 1024
# Back-pressure admits a batch while the backlog is under this share of spool.max_lag: the rate it divides by is
# measured now, and a drain slows after admission (the table outgrows the buffer pool, ingest takes the CPU). In a
# 120 s overload (loadtests/bench_sustained.py) admitting up to the full max_lag let the estimate reach 1.27x it.
LAG_ADMIT = 0.75


class Spool(SpoolStatus, DeadLetterTable):
    @classmethod
    def open(cls, settings: SpoolSettings) -> Spool:
        """Open (creating when missing) the spool file named by settings.path."""
        path = Path(settings.path)
        unfinished = unfinished_restore(path)
        if unfinished:
            raise SpoolCorrupt(unfinished)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, timeout=settings.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            schema.apply_pragmas(conn, settings.sync)
            schema.migrate(conn)
            conn.execute(f"PRAGMA busy_timeout = {int(LOCK_POLL_S * 1000)}")  # from now on: begin_write()
        except sqlite3.DatabaseError as exc:
            if is_busy(exc):
                raise SpoolBusy(f"spool {path} is locked: {exc}") from exc
            raise SpoolCorrupt(
                f"spool {path} cannot be opened: {exc}. Stop the service and move the file "
                f"aside (its intact entries can be salvaged), or restore it from a backup."
            ) from exc
        return cls(conn, settings)

    def durability(self) -> tuple[str, str]:
        """(journal_mode, synchronous) in force on this connection, as SQLite reports them."""
        mode = self._conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = self._conn.execute("PRAGMA synchronous").fetchone()[0]
        return mode, {0: "off", 1: "normal", 2: "full", 3: "extra"}.get(sync, str(sync))

    def checkpoint(self, truncate: bool = False) -> None:
        """Copy the WAL into the database file. Ingest connections leave this
        to the flusher (see schema.apply_pragmas), so that no request's commit
        pays for it; PASSIVE never waits for, nor blocks, a writer."""
        self._conn.execute(f"PRAGMA wal_checkpoint({'TRUNCATE' if truncate else 'PASSIVE'})").fetchall()

    def append_many(self, items: Sequence[Append]) -> list[int | SpoolError]:
        """Append several requests in one transaction (one fsync with
        sync=full). Returns, per item in order, its seq or the error that kept
        it out. Items that fit are committed before this returns; an item that
        would pass max_bytes gets SpoolFull and is not written."""
        try:
            return self._append_many(items)
        except sqlite3.Error as exc:
            error = append_error(exc)
            return [error for _ in items]

    def _append_many(self, items: Sequence[Append]) -> list[int | SpoolError]:
        with self._transaction() as conn:
            clock, live_bytes, waiting, rate, sink_healthy, heartbeat = conn.execute(
                "SELECT clock_us, live_bytes, live_sessions + live_tasks + live_events, drain_rate, sink_healthy, heartbeat_us"
                " FROM state").fetchone()
            # Back-pressure by time: only with a measured rate, and not while the
            # database is down or the flusher silent (then the byte cap protects).
            now = now_us()
            lag_limit = self._settings.max_lag if rate and sink_healthy and now - heartbeat < FLUSHER_STALE_US else 0
            results: list[int | SpoolError] = []
            accepted: list[tuple[int, Append]] = []
            received = max(now_us(), clock + 1)  # versions stay strictly increasing, in one commit too
            free, reserved = self._disk_room()
            for item in items:
                refusal: SpoolError | None = None
                if live_bytes + len(item.payload) > self._settings.max_bytes:
                    refusal = SpoolFull(f"spool holds {live_bytes} bytes, limit {self._settings.max_bytes}")
                elif lag_limit and item.kind not in COMMAND_TYPES and (waiting + item.record_count) / rate > lag_limit * LAG_ADMIT:
                    behind_s = waiting / rate
                    refusal = SpoolLagging(
                        f"{waiting} records wait, {behind_s:.0f} s of drain at {rate:.0f} rows/s; spool.max_lag is "
                        f"{lag_limit:g} s", retry_after=max(1, min(60, math.ceil(behind_s - lag_limit * LAG_ADMIT) + 1)))
                elif item.kind not in COMMAND_TYPES:  # commands are tiny, and a cleanup frees space
                    grows = int(len(item.payload) * _PAGE_SLACK)
                    # Afterwards free - grows must still cover the WAL (grown by as much) + the margin.
                    if free - 2 * grows < reserved:
                        refusal = SpoolFull(
                            f"the disk that holds the spool is nearly full: {free / _MIB:.1f} MiB free, and "
                            f"{reserved / _MIB:.1f} MiB stay free so the flusher can always checkpoint and trim")
                    else:
                        free, reserved = free - grows, reserved + grows
                if refusal is None:
                    accepted.append((received + len(accepted), item))
                    live_bytes += len(item.payload)
                    waiting += item.record_count if item.kind not in COMMAND_TYPES else 0
                results.append(refusal or len(accepted) - 1)
            seqs = self._insert_entries(conn, accepted)
            if any(isinstance(r, SpoolFull) for r in results):  # refused for space: /health says so
                conn.execute("UPDATE state SET refused_at_us = ?", (now,))
            return [seqs[r] if isinstance(r, int) else r for r in results]

    def import_entries(self, rows: Sequence[tuple[int, Append]]) -> int:
        """Append entries that keep their original acceptance time (their
        version), in the given order, in one transaction. For salvage only."""
        with self._transaction() as conn:
            return len(self._insert_entries(conn, rows))

    def read(self, after_seq: int, max_records: int) -> list[SpoolEntry]:
        """Entries with seq > after_seq in seq order, whole entries only, up to
        max_records records (at least one entry when any is waiting). A command
        entry comes alone: a batch ends before it."""
        cur = self._conn.execute(
            "SELECT seq, kind, received_at_us, record_count, payload FROM entries"
            " WHERE seq > ? ORDER BY seq", (after_seq,))
        entries: list[SpoolEntry] = []
        total = 0
        try:
            for row in cur:
                is_command = row[1] in COMMAND_TYPES
                if entries and (is_command or total + row[3] > max_records):
                    break
                entries.append(SpoolEntry(*row))
                total += row[3]
                if is_command or total >= max_records:
                    break
        finally:
            cur.close()
        return entries

    def waiting(self) -> Waiting:
        """What the flusher polls between batches: cheap, reads no payload."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            records, requested, flushed = conn.execute(
                "SELECT live_sessions + live_tasks + live_events, flush_requested_seq, flushed_seq FROM state").fetchone()
            oldest = conn.execute("SELECT received_at_us, seq FROM entries ORDER BY seq LIMIT 1").fetchone()
        finally:
            conn.execute("COMMIT")
        return Waiting(records, oldest[0] if oldest else 0, requested > flushed, oldest[1] if oldest else 0)

    def commit_drain(self, change: DrainCommit) -> None:
        """After a sink commit: trim entries through change.through_seq, record
        progress, hold orphans, release held tasks, add dead letters, all in
        one transaction. Replaying a cycle whose commit_drain never ran is
        harmless because sink writes are idempotent upserts."""
        with self._transaction() as conn:
            self._trim(change.through_seq)
            now = now_us()
            conn.execute(
                "UPDATE state SET flushed_seq = max(flushed_seq, ?), last_flush_us = ?, heartbeat_us = ?,"
                " sessions_written = sessions_written + ?, tasks_written = tasks_written + ?,"
                " events_written = events_written + ?,"
                " tasks_held = tasks_held + ?, records_dead = records_dead + ?,"
                " drain_rate = coalesce(?, drain_rate)",
                (change.through_seq, now, now, change.sessions_written, change.tasks_written, change.events_written,
                 len(change.hold), len(change.dead), change.drain_rate))
            conn.executemany(
                "INSERT INTO held (task_id, session_id, received_at_us, held_since_us, payload, held_at_clock_us)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(h.task_id, h.session_id, h.received_at_us, h.held_since_us, h.payload, h.held_at_clock_us)
                 for h in change.hold])
            conn.executemany("DELETE FROM held WHERE id = ?", [(i,) for i in change.release])
            conn.executemany("DELETE FROM held WHERE session_id = ? AND received_at_us < ?", change.drop_held)
            conn.executemany("INSERT OR REPLACE INTO command_results (seq, done_at_us, result) VALUES (?, ?, ?)",
                             [(seq, now, result) for seq, result in change.results])
            if change.results:
                conn.execute("DELETE FROM command_results WHERE done_at_us < ?", (now - RESULTS_KEPT_US,))
            conn.executemany(
                "INSERT INTO dead_letters (seq, kind, record_key, received_at_us, failed_at_us, error, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(d.seq, d.kind, d.record_key, d.received_at_us, now, d.error, d.payload) for d in change.dead])

    def _trim(self, through_seq: int) -> None:
        conn = self._conn
        rows = conn.execute(
            "SELECT kind, sum(record_count), sum(length(payload)) FROM entries WHERE seq <= ? GROUP BY kind",
            (through_seq,)).fetchall()
        gone = {kind: (count, size) for kind, count, size in rows}
        sessions = gone.get(KIND_SESSIONS, (0, 0))
        tasks = gone.get(KIND_TASKS, (0, 0))
        events = gone.get(KIND_AUDIT_EVENTS, (0, 0))
        size = sum(v[1] for v in gone.values())
        conn.execute("DELETE FROM entries WHERE seq <= ?", (through_seq,))
        conn.execute(
            "UPDATE state SET live_bytes = live_bytes - ?, live_sessions = live_sessions - ?,"
            " live_tasks = live_tasks - ?, live_events = live_events - ?, refused_at_us = 0",
            (size, sessions[0], tasks[0], events[0]))

    def command_result(self, seq: int) -> bytes | None:
        """The JSON result of the command appended as seq, once the flusher applied it."""
        row = self._conn.execute("SELECT result FROM command_results WHERE seq = ?", (seq,)).fetchone()
        return row[0] if row else None

    def held(self, limit: int = 10_000) -> list[HeldTask]:
        """Held orphan tasks, oldest first."""
        rows = self._conn.execute(
            "SELECT task_id, session_id, received_at_us, held_since_us, payload, id, held_at_clock_us FROM held"
            " ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [HeldTask(*row) for row in rows]

    def held_count(self) -> int:
        return self._conn.execute("SELECT count(*) FROM held").fetchone()[0]
