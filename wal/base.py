"""The spool's connection and the two write primitives every change goes
through: one write transaction (begin_write ... COMMIT, rolled back on any
error) and one way to add entries. Spool (wal/spool.py) builds on it, with
its status (wal/status.py) and dead-letter table (wal/dead_letter_table.py).

A spool object owns one SQLite connection and must be used from one thread
at a time. Every process (and every thread that writes) opens its own.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence

from core.records import KIND_AUDIT_EVENTS, KIND_SESSIONS, KIND_TASKS
from core.settings import SpoolSettings
from wal.types import Append, SpoolBusy, SpoolError, SpoolFull

logger = logging.getLogger(__name__)

LOCK_POLL_S = 0.003  # SQLite's own wait per try for the write lock (see SpoolBase.begin_write)


class SpoolBase:
    def __init__(self, conn: sqlite3.Connection, settings: SpoolSettings) -> None:
        self._conn = conn
        self._settings = settings

    def close(self) -> None:
        self._conn.close()

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
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (begin_write ... COMMIT), rolled back on any error."""
        conn = self._conn
        self.begin_write()
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _insert_entries(self, conn: sqlite3.Connection, rows: Sequence[tuple[int, Append]]) -> list[int]:
        """Inside a transaction: the one way entries are added (append, salvage,
        dead-letter retry), with the state counters that count them. Returns
        their seqs."""
        # The spool counts waiting records per kind in state columns (FORMAT.md): a
        # new kind of record needs its column there too.
        seqs, added = [], {KIND_SESSIONS: 0, KIND_TASKS: 0, KIND_AUDIT_EVENTS: 0}
        for received_at_us, item in rows:
            cur = conn.execute("INSERT INTO entries (kind, received_at_us, record_count, payload) VALUES (?, ?, ?, ?)",
                               (item.kind, received_at_us, item.record_count, item.payload))
            assert cur.lastrowid is not None  # an INSERT into a rowid table
            seqs.append(cur.lastrowid)
            if item.kind in added:  # commands are not records waiting
                added[item.kind] += item.record_count
        if rows:
            conn.execute(
                "UPDATE state SET clock_us = max(clock_us, ?), live_bytes = live_bytes + ?,"
                " live_sessions = live_sessions + ?, live_tasks = live_tasks + ?, live_events = live_events + ?",
                (max(r for r, _ in rows), sum(len(a.payload) for _, a in rows), added[KIND_SESSIONS],
                 added[KIND_TASKS], added[KIND_AUDIT_EVENTS]))
        return seqs

    def _write(self, sql: str, params: tuple) -> None:
        with self._transaction() as conn:
            conn.execute(sql, params)


def primary_code(exc: sqlite3.Error) -> int:
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # drop the extended part


def is_busy(exc: sqlite3.Error) -> bool:
    return primary_code(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def append_error(exc: sqlite3.Error) -> SpoolError:
    """What a write that SQLite refused tells the client (the request was not accepted)."""
    code = primary_code(exc)
    if code == sqlite3.SQLITE_FULL:
        return SpoolFull(f"the disk that holds the spool is full: {exc}")
    if is_busy(exc):
        return SpoolBusy(f"the spool stayed locked for busy_timeout: {exc}")
    logger.error("spool append failed: %s (sqlite code %s)", exc, code)
    return SpoolError(f"the spool refused the write: {exc}")
