"""The batching writer on a background thread: put() encodes the record and
queues it (it never waits on the network), one thread sends batches of up to
batch_size records or whatever waited flush_interval, one request at a time
so that two writes of one key arrive in the order they were put.

At interpreter exit every writer flushes for up to exit_timeout seconds.
After fork() the child gets an empty queue and its own thread; what the
parent had queued stays the parent's, so nothing is sent twice."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec

from persistence_client.disk_buffer import DiskBuffer
from persistence_client.errors import FlushTimeout
from persistence_client.outbox import (Delivery, Item, Outbox, Rejected, WriterStats, by_kind, log_rejected,
                                       record_key)
from persistence_client.protocol import Backoff, Kind

logger = logging.getLogger("persistence_client")
_ENCODER = msgspec.json.Encoder()
_WRITERS: weakref.WeakSet[BatchWriter] = weakref.WeakSet()


class BatchWriter:
    def __init__(self, http: Callable[[], httpx.Client], *, batch_size: int = 1000, flush_interval: float = 0.2,
                 max_queue: int = 100_000, disk_buffer: str | os.PathLike[str] | None = None,
                 on_rejected: Callable[[Rejected], None] = log_rejected, backoff: Backoff | None = None,
                 exit_timeout: float = 10.0, coalesce: bool = False) -> None:
        if not 1 <= batch_size <= 1000:
            raise ValueError("batch_size must be 1..1000 (the service's batch limit)")
        self._http = http
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.disk_buffer = Path(disk_buffer) if disk_buffer is not None else None
        self.on_rejected = on_rejected
        self.backoff = backoff or Backoff()
        self.exit_timeout = exit_timeout
        self.coalesce = coalesce
        self._reset()
        _WRITERS.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._outbox = Outbox(self.max_queue, DiskBuffer(self.disk_buffer) if self.disk_buffer else None)
        self._flush_target = 0  # flush() callers wait until acked_seq reaches this
        self._thread: threading.Thread | None = None
        self._give_up_at: float | None = None  # set by close(): stop retrying then
        if self._outbox.adopt():
            self._start()

    # -- the caller's side ----------------------------------------------------

    def put(self, kind: Kind, record: Any, wait: float = 0.0) -> None:
        """Queue one record (a Struct of persistence_api, or a dict of its
        fields). With max_queue records waiting, wait up to `wait` seconds
        for room, then raise QueueFull (WriterClosed after close()) rather
        than drop it."""
        payload = _ENCODER.encode(record)
        with self._cond:
            outbox = self._outbox
            if wait > 0 and outbox.full:
                self._cond.wait_for(lambda: not outbox.full or outbox.closed, wait)
            outbox.add(kind, payload, record_key(kind, record) if self.coalesce else None)
            if self._thread is None:
                self._start()
            if len(outbox.items) == self.batch_size:  # a full batch: wake the sender if it waits
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Return once every record put before this call is acknowledged (or
        rejected and reported); FlushTimeout after timeout seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._outbox.next_seq - 1
            self._flush_target = max(self._flush_target, target)
            self._cond.notify_all()
            while self._outbox.acked_seq < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise FlushTimeout(f"{target - self._outbox.acked_seq} records not acknowledged after "
                                       f"{timeout} s; they stay queued")
                if self._thread is None or not self._thread.is_alive():
                    self._start()
                self._cond.wait(left)

    def close(self, timeout: float | None = 10.0) -> None:
        """Send what is queued (for up to timeout seconds), then stop. What is
        still unsent is logged, and stays in the disk buffer when there is one."""
        with self._cond:
            if self._outbox.closed:
                return
            self._outbox.closed = True
            self._give_up_at = None if timeout is None else time.monotonic() + timeout
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        unsent = len(self._outbox.items)
        if unsent:
            where = f"; they stay in {self.disk_buffer} for the next start" if self.disk_buffer else ""
            logger.error("closing the writer with %d records unsent after %s s%s", unsent, timeout, where)
        if self._outbox.buffer is not None:
            self._outbox.buffer.close()

    @property
    def stats(self) -> WriterStats:
        with self._cond:
            return self._outbox.snapshot()

    # -- the sending thread ---------------------------------------------------

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="persistence-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    flushing = self._flush_target > self._outbox.acked_seq
                    wait = self._outbox.due(self.batch_size, self.flush_interval, flushing)
                    if wait == 0:
                        break
                    if wait is None and self._outbox.closed:
                        return
                    self._cond.wait(wait)
                chunk, sendable = self._outbox.take(self.batch_size)
            try:
                acknowledged, rejected = self._send(sendable)
            except _GiveUp:
                with self._cond:
                    self._outbox.give_back(chunk)
                    self._cond.notify_all()
                return
            except Exception:  # a bug here must not lose the chunk or stop the sending
                logger.exception("the writer failed to send %d records; they stay first in line", len(chunk))
                with self._cond:
                    self._outbox.give_back(chunk)
                try:
                    self._pause(1.0)
                except _GiveUp:
                    return
                continue
            with self._cond:
                self._outbox.done(chunk, acknowledged, rejected)
                self._cond.notify_all()

    def _send(self, chunk: list[Item]) -> tuple[int, int]:
        acknowledged = rejected = 0
        for kind, items in by_kind(chunk):
            delivery = Delivery(kind, items, self.backoff, self.on_rejected, self._outbox.stats)
            while not delivery.finished:
                try:
                    answer = self._http().post(kind.path, content=delivery.body(),
                                               headers={"content-type": "application/json"})
                    delay = delivery.on_answer(answer.status_code, answer.content, answer.headers)
                except httpx.TransportError as exc:
                    delay = delivery.on_transport_error(exc)
                if delay:
                    self._pause(delay)
            acknowledged += delivery.acknowledged
            rejected += delivery.rejected
        return acknowledged, rejected

    def _pause(self, delay: float) -> None:
        """Wait before sending again; close() wakes this up, and once its
        deadline would pass the batch is given back instead."""
        end = time.monotonic() + delay
        with self._cond:
            while (left := end - time.monotonic()) > 0:
                if self._give_up_at is not None and end > self._give_up_at:
                    raise _GiveUp
                self._cond.wait(left)

    def _after_fork_in_child(self) -> None:
        if self._outbox.buffer is not None:
            self._outbox.buffer.forget_after_fork()
        self._reset()


class _GiveUp(Exception):
    """close()'s time ran out while a batch waited to be sent again."""


def _flush_at_exit() -> None:
    for writer in list(_WRITERS):
        writer.close(writer.exit_timeout)


def _after_fork_in_child() -> None:
    for writer in list(_WRITERS):
        writer._after_fork_in_child()


atexit.register(_flush_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
