"""The service's own audit events (API.md "What the service records itself"):
management writes, users, logins, user sessions, files, and requests refused
for a missing or wrong API key.

Each process has one AuditTrail. `record` returns once the event is durable
in the spool, like a client's batch: a handler awaits it before answering, so
an answered management write always has its event. Events of requests that
arrive together share one spool entry (one thread appends, as ingest's group
commit does). Refusals are not awaited and are limited to
audit.refusals_per_s per process, so that a client without a key cannot fill
the spool; the ones over the limit are counted, not recorded.

Events never hold a password, a token or file content: only the ids acted
on, the operation and its outcome.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from typing import Any

from core import metrics
from persistence_api.audit import AuditEvent, AuditEventBatch
from core.kinds import AUDIT_EVENTS
from core.records import JSON_ENCODER
from core.settings import AuditSettings, SpoolSettings
from core.times import from_us, now_us
from wal.types import Append, SpoolError
from wal.spool import Spool

logger = logging.getLogger(__name__)
MAX_EVENTS_PER_ENTRY = 1000
QUEUE_LIMIT = 10_000  # events waiting for the spool; more and refusals are dropped (counted)


class _Pending:
    __slots__ = ("event", "future", "loop")

    def __init__(self, event: AuditEvent, future: asyncio.Future | None, loop: asyncio.AbstractEventLoop | None):
        self.event, self.future, self.loop = event, future, loop


class AuditTrail:
    def __init__(self, spool: SpoolSettings, settings: AuditSettings) -> None:
        self._spool_settings = spool
        self._enabled = settings.record_service_events
        self._refusal_rate = settings.refusals_per_s
        self._refusal_tokens = max(1.0, settings.refusals_per_s)
        self._refusal_updated = time.monotonic()
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="audit-trail", daemon=True)
        self._started = False

    def start(self) -> None:
        if self._enabled:
            self._thread.start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join()

    async def record(self, request: Any, action: str, resource_type: str, resource_id: str | None,
                     outcome: str = "success", message: str | None = None,
                     details: dict[str, Any] | None = None) -> None:
        """Record an event of this request; returns once it is in the spool.
        A spool that refuses it (full, broken) is logged and counted: the
        operation itself already happened and its answer is not withheld."""
        if not self._started:
            return
        event = _event(request.scope, action, resource_type, resource_id, outcome, message, details)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Pending(event, future, loop))
        try:
            await future
        except SpoolError as exc:
            logger.error("audit event %s for %s not recorded: %s", action, resource_id, exc)

    def refused(self, scope: dict[str, Any], status: int, reason: str) -> None:
        """A request refused for its API key: recorded without waiting, within the rate limit."""
        if not self._started:
            return
        now = time.monotonic()
        self._refusal_tokens = min(max(1.0, self._refusal_rate),
                                   self._refusal_tokens + (now - self._refusal_updated) * self._refusal_rate)
        self._refusal_updated = now
        if self._refusal_tokens < 1 or self._queue.qsize() >= QUEUE_LIMIT:
            metrics.AUDIT_EVENTS_DROPPED.inc()
            return
        self._refusal_tokens -= 1
        path = scope.get("path", "")
        self._queue.put(_Pending(_event(scope, "request.refused", "endpoint", f"{scope.get('method')} {path}"[:255],
                                        "failure", reason, {"status": status}), None, None))

    def _run(self) -> None:
        spool = Spool.open(self._spool_settings)
        try:
            running = True
            while running:
                first = self._queue.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < MAX_EVENTS_PER_ENTRY:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        running = False
                        break
                    batch.append(item)
                self._append(spool, batch)
        finally:
            spool.close()

    def _append(self, spool: Spool, batch: list[_Pending]) -> None:
        payload = JSON_ENCODER.encode(AuditEventBatch([p.event for p in batch]))
        try:
            (result,) = spool.append_many([Append(AUDIT_EVENTS.entry_kind, payload, len(batch))])
        except Exception as exc:  # a bug: the waiting handlers get a SpoolError, the thread lives on
            logger.exception("appending %d audit events failed unexpectedly", len(batch))
            result = SpoolError(f"internal error: {type(exc).__name__}")
        if isinstance(result, SpoolError):
            metrics.AUDIT_EVENTS_DROPPED.inc(len(batch))
        else:
            metrics.RECORDS_ACCEPTED.labels(AUDIT_EVENTS.name).inc(len(batch))
        for pending in batch:
            if pending.future is not None and pending.loop is not None:
                pending.loop.call_soon_threadsafe(_settle, pending.future, result)


def _settle(future: asyncio.Future, result: int | SpoolError) -> None:
    if future.done():
        return
    if isinstance(result, SpoolError):
        future.set_exception(result)
    else:
        future.set_result(result)


def _event(scope: dict[str, Any], action: str, resource_type: str, resource_id: str | None, outcome: str,
           message: str | None, details: dict[str, Any] | None) -> AuditEvent:
    state = scope.get("state") or {}
    client = scope.get("client")
    agent = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"user-agent"), None)
    return AuditEvent(
        actor_id=state.get("api_key") or "anonymous", actor_type="service", action=action,
        resource_type=resource_type, resource_id=resource_id, outcome=outcome,  # type: ignore[arg-type]
        event_id=str(uuid.uuid4()), occurred_at=from_us(now_us()),
        ip=client[0][:64] if client else None, user_agent=agent[:512] if agent else None,
        request_id=state.get("request_id"), message=message, details=details)
