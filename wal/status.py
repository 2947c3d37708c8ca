"""The spool's counters and the flusher's published state: what /health,
/metrics, /flush and the status command read, and the disk headroom ingest
keeps (see wal/spool.py)."""

from __future__ import annotations

import logging
import os
import sqlite3

from core.times import now_us
from wal.base import SpoolBase, append_error
from wal.types import SpoolStats, Totals

logger = logging.getLogger(__name__)

# Disk headroom. The flusher frees space by checkpointing (which may grow the
# database file by up to the WAL's size) and then trimming (a few pages). If
# appends filled the disk, neither could run and nothing would ever be freed.
# So a batch is refused unless, after it, the free space still covers the
# WAL's size plus this margin.
HEADROOM_MARGIN_BYTES = 1024 * 1024


class SpoolStatus(SpoolBase):
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
            raise append_error(exc) from exc

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

    def stats(self) -> SpoolStats:
        """A consistent snapshot of the spool's counters (one read transaction)."""
        conn = self._conn
        disk_free, reserved = self._disk_room()
        conn.execute("BEGIN")
        try:
            state = conn.execute(
                "SELECT live_sessions, live_tasks, live_bytes, flushed_seq, last_flush_us, heartbeat_us,"
                " sink_healthy, sink_error, sessions_written, tasks_written, refused_at_us, tasks_held,"
                " records_dead, drain_rate, live_events FROM state").fetchone()
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
            disk_free_bytes=disk_free, tasks_held=state[11], records_dead=state[12], drain_rate=state[13],
            pending_events=state[14])

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


def _disk_free(path: str) -> int:
    stat = os.statvfs(os.path.dirname(path) or ".")
    return stat.f_bavail * stat.f_frsize
