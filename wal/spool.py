"""Spool: append, read in order, trim, hold, dead-letter. Layout and
invariants are in wal/FORMAT.md.

A Spool object owns one SQLite connection and must be used from one thread
at a time. Every process (and every thread that writes) opens its own.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from core.records import COMMAND_TYPES, KIND_SESSIONS, KIND_TASKS, SpoolEntry
from core.settings import SpoolSettings
from core.times import now_us
from wal import schema
from wal.types import (Append, DeadLetter, DrainCommit, HeldTask, SpoolBusy, SpoolCorrupt, SpoolError,
                       SpoolFull, SpoolStats, Totals, Waiting)

logger = logging.getLogger(__name__)

LOCK_POLL_S = 0.003  # SQLite's own wait per try for the write lock (see Spool.begin_write)

RESULTS_KEPT_US = 3_600_000_000  # a command's result is kept an hour for the caller to read
# Disk headroom. The flusher frees space by checkpointing (which may grow the
# database file by up to the WAL's size) and then trimming (a few pages). If
# appends filled the disk, neither could run and nothing would ever be freed.
# So a batch is refused unless, after it, the free space still covers the
# WAL's size plus this margin.
HEADROOM_MARGIN_BYTES = 1024 * 1024
_PAGE_SLACK = 1.1  # a payload takes about 10% more in pages and WAL frames
_MIB = 1024 * 1024

class Spool:
    def __init__(self, conn: sqlite3.Connection, settings: SpoolSettings) -> None:
        self._conn = conn
        self._settings = settings

    @classmethod
    def open(cls, settings: SpoolSettings) -> Spool:
        """Open (creating when missing) the spool file named by settings.path."""
        path = Path(settings.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, timeout=settings.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            schema.apply_pragmas(conn, settings.sync)
            schema.migrate(conn)
            conn.execute(f"PRAGMA busy_timeout = {int(LOCK_POLL_S * 1000)}")  # from now on: begin_write()
        except sqlite3.DatabaseError as exc:
            if _is_busy(exc):
                raise SpoolBusy(f"spool {path} is locked: {exc}") from exc
            raise SpoolCorrupt(
                f"spool {path} cannot be opened: {exc}. Stop the service and move the file "
                f"aside (its intact entries can be salvaged), or restore it from a backup."
            ) from exc
        return cls(conn, settings)

    def close(self) -> None:
        self._conn.close()

    def durability(self) -> tuple[str, str]:
        """(journal_mode, synchronous) in force on this connection, as SQLite reports them."""
        mode = self._conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = self._conn.execute("PRAGMA synchronous").fetchone()[0]
        return mode, {0: "off", 1: "normal", 2: "full", 3: "extra"}.get(sync, str(sync))

    def begin_write(self) -> None:
        """BEGIN IMMEDIATE, waiting at most busy_timeout for the write lock.

        SQLite's own busy handler sleeps 1, 2, 5 ... up to 100 ms between
        tries, so with two ingest workers a writer could sleep long after the
        lock was free (p99.9 of an append ~110 ms). Here each try waits a few
        ms inside SQLite and the next follows at once."""
        deadline = time.monotonic() + self._settings.busy_timeout
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise

    def checkpoint(self, truncate: bool = False) -> None:
        """Copy the WAL into the database file. Ingest connections leave this
        to the flusher (see schema.apply_pragmas), so that no request's commit
        pays for it; PASSIVE never waits for, nor blocks, a writer."""
        self._conn.execute(f"PRAGMA wal_checkpoint({'TRUNCATE' if truncate else 'PASSIVE'})").fetchall()

    # -- ingest ---------------------------------------------------------------

    def append_many(self, items: Sequence[Append]) -> list[int | SpoolError]:
        """Append several requests in one transaction (one fsync with
        sync=full). Returns, per item in order, its seq or the error that kept
        it out. Items that fit are committed before this returns; an item that
        would pass max_bytes gets SpoolFull and is not written."""
        try:
            return self._append_many(items)
        except sqlite3.Error as exc:
            error = _append_error(exc)
            return [error for _ in items]

    def _append_many(self, items: Sequence[Append]) -> list[int | SpoolError]:
        conn = self._conn
        self.begin_write()
        try:
            clock, live_bytes = conn.execute("SELECT clock_us, live_bytes FROM state").fetchone()
            results: list[int | SpoolError] = []
            added = {KIND_SESSIONS: 0, KIND_TASKS: 0}
            received = max(now_us(), clock + 1)
            free, reserved = self._disk_room()
            for item in items:
                if live_bytes + len(item.payload) > self._settings.max_bytes:
                    results.append(SpoolFull(f"spool holds {live_bytes} bytes, limit {self._settings.max_bytes}"))
                    continue
                if item.kind not in COMMAND_TYPES:  # commands are tiny, and a cleanup frees space
                    grows = int(len(item.payload) * _PAGE_SLACK)
                    # Afterwards free - grows must still cover the WAL (grown by as much) + the margin.
                    if free - 2 * grows < reserved:
                        results.append(SpoolFull(
                            f"the disk that holds the spool is nearly full: {free / _MIB:.1f} MiB free, and "
                            f"{reserved / _MIB:.1f} MiB stay free so the flusher can always checkpoint and trim"))
                        continue
                    free, reserved = free - grows, reserved + grows
                cur = conn.execute(
                    "INSERT INTO entries (kind, received_at_us, record_count, payload) VALUES (?, ?, ?, ?)",
                    (item.kind, received, item.record_count, item.payload))
                assert cur.lastrowid is not None  # an INSERT into a rowid table
                results.append(cur.lastrowid)
                live_bytes += len(item.payload)
                added[item.kind] = added.get(item.kind, 0) + item.record_count
                received += 1  # versions stay strictly increasing inside one commit
            conn.execute(
                "UPDATE state SET clock_us = ?, live_bytes = ?, live_sessions = live_sessions + ?,"
                " live_tasks = live_tasks + ?", (received - 1, live_bytes, added[KIND_SESSIONS], added[KIND_TASKS]))
            if any(isinstance(r, SpoolFull) for r in results):
                conn.execute("UPDATE state SET refused_at_us = ?", (now_us(),))
            conn.execute("COMMIT")
            return results
        except BaseException:
            _rollback(conn)
            raise

    def import_entries(self, rows: Sequence[tuple[int, Append]]) -> int:
        """Append entries that keep their original acceptance time (their
        version), in the given order, in one transaction. For salvage only."""
        conn = self._conn
        self.begin_write()
        try:
            for received_at_us, item in rows:
                conn.execute("INSERT INTO entries (kind, received_at_us, record_count, payload) VALUES (?, ?, ?, ?)",
                             (item.kind, received_at_us, item.record_count, item.payload))
            conn.execute(
                "UPDATE state SET clock_us = max(clock_us, ?), live_bytes = live_bytes + ?,"
                " live_sessions = live_sessions + ?, live_tasks = live_tasks + ?",
                (max((r for r, _ in rows), default=0), sum(len(a.payload) for _, a in rows),
                 sum(a.record_count for _, a in rows if a.kind == KIND_SESSIONS),
                 sum(a.record_count for _, a in rows if a.kind == KIND_TASKS)))
            conn.execute("COMMIT")
            return len(rows)
        except BaseException:
            _rollback(conn)
            raise

    def last_seq(self) -> int:
        """The highest seq ever committed (0 for a new spool)."""
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
        return row[0] if row else 0

    def totals(self) -> Totals:
        """What the flusher has done since the spool was created."""
        return Totals(*self._conn.execute(
            "SELECT sessions_written, tasks_written, tasks_held, records_dead FROM state").fetchone())

    def flushed_seq(self) -> int:
        """Every entry with seq <= this is committed to the sink."""
        return self._conn.execute("SELECT flushed_seq FROM state").fetchone()[0]

    def sink_version(self) -> tuple[int, int]:
        """Moves on with every commit the flusher makes to the sink (each one
        sets last_flush_us), so an answer computed from the sink stays exact
        while this is unchanged."""
        return self._conn.execute("SELECT flushed_seq, last_flush_us FROM state").fetchone()

    def request_flush(self, through_seq: int) -> None:
        """Ask the flusher to write through this seq now rather than wait to fill a batch.
        Raises a SpoolError (the caller answers 503) when the spool cannot be written."""
        try:
            self._write("UPDATE state SET flush_requested_seq = max(flush_requested_seq, ?)", (through_seq,))
        except sqlite3.Error as exc:
            raise _append_error(exc) from exc

    # -- flusher --------------------------------------------------------------

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
                "SELECT live_sessions + live_tasks, flush_requested_seq, flushed_seq FROM state").fetchone()
            oldest = conn.execute("SELECT received_at_us, seq FROM entries ORDER BY seq LIMIT 1").fetchone()
        finally:
            conn.execute("COMMIT")
        return Waiting(records, oldest[0] if oldest else 0, requested > flushed, oldest[1] if oldest else 0)

    def commit_drain(self, change: DrainCommit) -> None:
        """After a sink commit: trim entries through change.through_seq, record
        progress, hold orphans, release held tasks, add dead letters, all in
        one transaction. Replaying a cycle whose commit_drain never ran is
        harmless because sink writes are idempotent upserts."""
        conn = self._conn
        self.begin_write()
        try:
            self._trim(change.through_seq)
            now = now_us()
            conn.execute(
                "UPDATE state SET flushed_seq = max(flushed_seq, ?), last_flush_us = ?, heartbeat_us = ?,"
                " sessions_written = sessions_written + ?, tasks_written = tasks_written + ?,"
                " tasks_held = tasks_held + ?, records_dead = records_dead + ?",
                (change.through_seq, now, now, change.sessions_written, change.tasks_written,
                 len(change.hold), len(change.dead)))
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
            self._insert_dead(change.dead, now)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _trim(self, through_seq: int) -> None:
        conn = self._conn
        rows = conn.execute(
            "SELECT kind, sum(record_count), sum(length(payload)) FROM entries WHERE seq <= ? GROUP BY kind",
            (through_seq,)).fetchall()
        gone = {kind: (count, size) for kind, count, size in rows}
        sessions = gone.get(KIND_SESSIONS, (0, 0))
        tasks = gone.get(KIND_TASKS, (0, 0))
        size = sum(v[1] for v in gone.values())
        conn.execute("DELETE FROM entries WHERE seq <= ?", (through_seq,))
        conn.execute(
            "UPDATE state SET live_bytes = live_bytes - ?, live_sessions = live_sessions - ?,"
            " live_tasks = live_tasks - ?, refused_at_us = 0", (size, sessions[0], tasks[0]))

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

    def beat(self, sink_healthy: bool, sink_error: str = "", healthy_clock_us: int | None = None) -> None:
        """Publish the flusher's liveness, the sink's health and the healthy
        clock. Best effort: on a full disk or a busy spool the flusher must go
        on draining, not stop."""
        try:
            self._write("UPDATE state SET heartbeat_us = ?, sink_healthy = ?, sink_error = ?,"
                        " healthy_clock_us = coalesce(?, healthy_clock_us)",
                        (now_us(), int(sink_healthy), sink_error[:500], healthy_clock_us))
        except sqlite3.Error as exc:
            logger.warning("could not publish the flusher heartbeat: %s", exc)

    def healthy_clock_us(self) -> int:
        """Where the flusher's healthy clock stood at its last beat."""
        return self._conn.execute("SELECT healthy_clock_us FROM state").fetchone()[0]

    # -- dead letters ---------------------------------------------------------

    def dead_letters(self, limit: int = 100, after_id: int = 0) -> list[DeadLetter]:
        rows = self._conn.execute(
            "SELECT seq, kind, record_key, received_at_us, error, payload, failed_at_us, id"
            " FROM dead_letters WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        return [DeadLetter(*row) for row in rows]

    def purge_dead_letters(self, ids: Iterable[int] | None = None) -> int:
        """Delete the given dead letters (all when ids is None); returns how many."""
        conn = self._conn
        self.begin_write()
        try:
            if ids is None:
                cur = conn.execute("DELETE FROM dead_letters")
            else:
                cur = conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(i,) for i in ids])
            conn.execute("COMMIT")
            return cur.rowcount
        except BaseException:
            _rollback(conn)
            raise

    def _insert_dead(self, dead: Sequence[DeadLetter], now: int) -> None:
        self._conn.executemany(
            "INSERT INTO dead_letters (seq, kind, record_key, received_at_us, failed_at_us, error, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(d.seq, d.kind, d.record_key, d.received_at_us, now, d.error, d.payload) for d in dead])

    # -- status ---------------------------------------------------------------

    def stats(self) -> SpoolStats:
        """A consistent snapshot of the spool's counters (one read transaction)."""
        conn = self._conn
        disk_free, reserved = self._disk_room()
        conn.execute("BEGIN")
        try:
            state = conn.execute(
                "SELECT live_sessions, live_tasks, live_bytes, flushed_seq, last_flush_us, heartbeat_us,"
                " sink_healthy, sink_error, sessions_written, tasks_written, refused_at_us, tasks_held,"
                " records_dead FROM state").fetchone()
            oldest = conn.execute("SELECT received_at_us FROM entries ORDER BY seq LIMIT 1").fetchone()
            held = conn.execute("SELECT count(*) FROM held").fetchone()[0]
            dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            last = self.last_seq()
        finally:
            conn.execute("COMMIT")
        return SpoolStats(
            pending_sessions=state[0], pending_tasks=state[1], pending_bytes=state[2],
            max_bytes=self._settings.max_bytes, last_seq=last, flushed_seq=state[3],
            last_flush_us=state[4], oldest_received_us=oldest[0] if oldest else 0,
            heartbeat_us=state[5], sink_healthy=bool(state[6]), sink_error=state[7],
            held_tasks=held, dead_letters=dead, sessions_written=state[8], tasks_written=state[9],
            is_refusing=bool(state[10]) or state[2] >= self._settings.max_bytes or disk_free < reserved,
            disk_free_bytes=disk_free, tasks_held=state[11], records_dead=state[12])

    def is_short_of_disk(self) -> bool:
        """Free space within one margin of the headroom ingest keeps: appends
        are refused, or soon will be, until the WAL shrinks."""
        free, reserved = self._disk_room()
        return free < reserved + HEADROOM_MARGIN_BYTES

    def _disk_room(self) -> tuple[int, int]:
        """(free bytes on the spool's filesystem, bytes to keep free: the WAL's size + the margin)."""
        try:
            wal = os.stat(f"{self._settings.path}-wal").st_size
        except FileNotFoundError:
            wal = 0
        return _disk_free(self._settings.path), wal + HEADROOM_MARGIN_BYTES

    def _write(self, sql: str, params: tuple) -> None:
        conn = self._conn
        self.begin_write()
        try:
            conn.execute(sql, params)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise


def _disk_free(path: str) -> int:
    stat = os.statvfs(os.path.dirname(path) or ".")
    return stat.f_bavail * stat.f_frsize


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _primary_code(exc: sqlite3.Error) -> int:
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # drop the extended part


def _is_busy(exc: sqlite3.Error) -> bool:
    return _primary_code(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _append_error(exc: sqlite3.Error) -> SpoolError:
    code = _primary_code(exc)
    if code == sqlite3.SQLITE_FULL:
        return SpoolFull(f"the disk that holds the spool is full: {exc}")
    if _is_busy(exc):
        return SpoolBusy(f"the spool stayed locked for busy_timeout: {exc}")
    logger.error("spool append failed: %s (sqlite code %s)", exc, code)
    return SpoolError(f"the spool refused the write: {exc}")
