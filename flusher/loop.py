"""The flusher's loop: wait for a batch, drain it, retry transient sink
errors with backoff (in order, skipping nothing), publish a heartbeat, and on
stop drain what is left for at most shutdown_grace seconds.

Errors of the spool itself (busy, disk full) are retried like transient sink
errors. Any other error of a cycle is a bug met by some entry: the loop then
drains the entries of that cycle one at a time, and an entry that fails
alone is set aside as a dead letter, so no entry stops the spool."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import TYPE_CHECKING

from msgspec import Struct

from core.records import JSON_ENCODER, KIND_ARCHIVE, KIND_AUDIT_RETENTION, KIND_CLEANUP, ArchiveCommand, AuditRetentionCommand, CleanupCommand
from core.settings import ArchiveSettings, FlushSettings, RetentionSettings
from core.times import now_us
from core import metrics
from flusher.clock import HealthyClock
from flusher.drain import Drainer
from flusher.writers import Writers
from flusher.retry import Backoff
from plugins import Sink, TransientSinkError
from wal import Spool
from wal.types import Append

if TYPE_CHECKING:
    from archive.runner import Archiver

logger = logging.getLogger(__name__)

POLL_S = 0.01
BEAT_EVERY_S = 1.0
HELD_RETRY_EVERY_S = 2.0
PING_EVERY_S = 5.0


class Flusher:
    def __init__(self, spool: Spool, sink: Sink, settings: FlushSettings,
                 retention: RetentionSettings | None = None, audit_retention_days: float = 0.0,
                 archiver: Archiver | None = None, archive: ArchiveSettings | None = None,
                 writers: Writers | None = None) -> None:
        self._spool = spool
        self._retention = retention
        self._archive = archive
        self._audit_retention_days = audit_retention_days
        self._last_retention = time.monotonic()
        self._sink = sink
        self._settings = settings
        self._clock = HealthyClock(spool.healthy_clock_us())
        self._drainer = Drainer(spool, sink, settings, self._clock.now_us, archiver, writers)
        self._backoff = Backoff(settings.retry_initial, settings.retry_max)
        self._last_beat = 0.0
        self._last_held_check = 0.0
        self._last_ping = time.monotonic()
        self._sink_healthy = False
        self._sink_error = ""

    def run(self, stop: threading.Event, shutdown_grace_s: float) -> None:
        """Loop until stop is set, then drain for at most shutdown_grace_s."""
        self._set_health(self._ping_sink(), self._sink_error)
        while not stop.is_set():
            self._step(stop)
        deadline = time.monotonic() + shutdown_grace_s
        while self._spool.waiting().oldest_received_us and time.monotonic() < deadline:
            self._step(stop, deadline)
        left = self._spool.waiting().records
        logger.info("flusher stopped; %d records left in the spool", left)

    def _step(self, stop: threading.Event, deadline: float | None = None) -> None:
        try:
            drained = self._drain_ready(stop.is_set())
            if not drained:
                self._idle_chores()
                time.sleep(POLL_S)
            self._backoff.reset()
        except TransientSinkError as exc:
            metrics.SINK_ERRORS.labels("transient").inc()
            metrics.FLUSH_RETRIES.inc()
            self._set_health(False, str(exc))
            delay = self._backoff.next_delay()
            logger.warning("sink unavailable, retrying in %.2f s: %s", delay, exc)
            self._sleep(delay, stop if deadline is None else None, deadline)
        except sqlite3.Error as exc:  # the spool itself (busy, disk full): retried, nothing skipped
            metrics.FLUSH_RETRIES.inc()
            delay = self._backoff.next_delay()
            logger.warning("spool unavailable, retrying in %.2f s: %s", delay, exc)
            self._sleep(delay, stop if deadline is None else None, deadline)
        except Exception:  # a bug met by some entry of this cycle: find it by draining one entry at a time
            metrics.FLUSH_RETRIES.inc()
            logger.exception("drain cycle failed; draining entries through seq %d one at a time",
                             self._drainer.failed())

    def _drain_ready(self, stopping: bool) -> bool:
        waiting = self._spool.waiting()
        if not waiting.oldest_received_us:
            return False
        age_s = (now_us() - waiting.oldest_received_us) / 1e6
        full = waiting.records >= self._settings.batch_rows
        if not (full or stopping or waiting.is_flush_requested or age_s >= self._settings.max_delay):
            return False
        self._drainer.drain_once(self._due_held())
        self._set_health(True, "")
        return True

    def _due_held(self) -> list:
        if time.monotonic() - self._last_held_check < HELD_RETRY_EVERY_S:
            return []
        self._last_held_check = time.monotonic()
        return self._spool.held()

    def _idle_chores(self) -> None:
        now = time.monotonic()
        if now - self._last_held_check >= HELD_RETRY_EVERY_S and self._spool.held_count():
            self._last_held_check = now
            held = self._spool.held()
            if held:
                self._drainer.drain_held(held)
        if now - self._last_ping >= PING_EVERY_S:
            self._last_ping = now
            self._set_health(self._ping_sink(), self._sink_error)
        if now - self._last_beat >= BEAT_EVERY_S:
            self._beat()
            self._spool.checkpoint(truncate=not self._spool.waiting().oldest_received_us)
        if self._retention and self._retention.interval and now - self._last_retention >= self._retention.interval:
            self._last_retention = now
            self._schedule_retention()

    def _schedule_retention(self) -> None:
        # Through the spool like a client's cleanup, so it is ordered after every acknowledged write.
        # With the archive on, finished sessions are archived rather than deleted, and expired audit events
        # archived before they are deleted.
        assert self._retention is not None
        archive = self._archive is not None and self._archive.after_days > 0
        if archive:
            assert self._archive is not None
            command: Struct = ArchiveCommand(self._archive.after_days, self._archive.tasks_per_run)
            commands = [Append(KIND_ARCHIVE, JSON_ENCODER.encode(command), 1)]
        else:
            command = CleanupCommand(self._retention.completed_days, self._retention.failed_days)
            commands = [Append(KIND_CLEANUP, JSON_ENCODER.encode(command), 1)]
        if self._audit_retention_days:
            audit = AuditRetentionCommand(self._audit_retention_days, archive=archive)
            commands.append(Append(KIND_AUDIT_RETENTION, JSON_ENCODER.encode(audit), 1))
        results = self._spool.append_many(commands)
        logger.info("scheduled retention cleanup: %s", results)

    def _ping_sink(self) -> bool:
        healthy = self._sink.ping()
        if not healthy:
            self._sink_error = self._sink_error or "the database does not answer"
        return healthy

    def _set_health(self, healthy: bool, error: str) -> None:
        self._clock.tick(self._sink_healthy)  # the time until now counts by the health it had
        changed = (healthy, error) != (self._sink_healthy, self._sink_error)
        self._sink_healthy, self._sink_error = healthy, ("" if healthy else error)
        if changed or time.monotonic() - self._last_beat >= BEAT_EVERY_S:
            self._beat()

    def _beat(self) -> None:
        self._last_beat = time.monotonic()
        self._clock.tick(self._sink_healthy)
        self._spool.beat(self._sink_healthy, self._sink_error, self._clock.now_us())

    def _sleep(self, seconds: float, stop: threading.Event | None, deadline: float | None) -> None:
        if deadline is not None:
            seconds = max(0.0, min(seconds, deadline - time.monotonic()))
        if stop is not None:
            stop.wait(seconds)
        else:
            time.sleep(seconds)

