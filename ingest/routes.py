"""Write-path handlers: batches, flush, health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from core import VERSION
from persistence_api.audit import EventsAccepted
from core.http import json_response, read_body
from core.metrics import RECORDS_ACCEPTED
from core.kinds import RecordKind
from persistence_api.translation import Accepted, FlushResult
from core.times import iso_z, now_us
from ingest.validation import validate_batch
from core.health import health_report, stores_health
from wal.types import Append

FLUSH_POLL_S = 0.02


def batch_endpoint(kind: RecordKind) -> Callable[[Request], Awaitable[Response]]:
    """POST a batch of this kind: validate it whole, spool it (group commit), 202."""
    async def accept(request: Request) -> Response:
        body = await read_body(request, request.state.max_body_bytes, request.state.body_timeout)
        records = validate_batch(kind, body)
        count = len(records)
        if kind.complete is not None:  # fill in missing keys (and defaults) before spooling: a replay stores the same
            kind.complete(records, now_us())
            body = kind.encode_batch(records)
            answer: Accepted | EventsAccepted = EventsAccepted("accepted", count, [kind.key(r) for r in records])
        else:
            answer = Accepted("accepted", count, iso_z(now_us()))
        await request.state.writer.append(Append(kind.entry_kind, body, count))
        RECORDS_ACCEPTED.labels(kind.name).inc(count)
        return json_response(answer, 202)
    accept.__name__ = f"post_{kind.batch_field}"
    return accept


async def flush(request: Request) -> Response:
    """Waits until everything acknowledged before this call is in the sink,
    and says what the flusher did meanwhile: rows written to the database,
    orphan tasks held for their session, records dead-lettered."""
    spool = request.state.spool
    started = time.monotonic()
    target = spool.last_seq()
    before = spool.totals()
    if spool.flushed_seq() < target:
        spool.request_flush(target)
    deadline = started + request.state.flush_timeout
    while spool.flushed_seq() < target and time.monotonic() < deadline:
        await asyncio.sleep(FLUSH_POLL_S)
    done = spool.totals().since(before)
    flushed = spool.flushed_seq() >= target
    answer = FlushResult("flushed" if flushed else "error", done.sessions_written, done.tasks_written,
                         done.tasks_held, done.records_dead, round((time.monotonic() - started) * 1000, 1))
    if flushed:
        notes = []
        if done.tasks_held:
            notes.append(f"{done.tasks_held} task(s) are held until their session is stored (orphans; see "
                         f"/health buffer.held_orphans)")
        if done.records_dead:
            notes.append(f"{done.records_dead} record(s) could not be stored and were moved to the dead letters "
                         f"(GET /api/v1/system/dead-letters)")
        answer.detail = "; ".join(notes) + "." if notes else None
        return json_response(answer)
    reason = spool.stats().sink_error or "the flusher has not caught up"
    answer.detail = (f"Not everything reached the database within {request.state.flush_timeout} s "
                     f"({reason}); nothing is lost, it is written when the database is back.")
    answer.error_code, answer.errors = "FLUSH_TIMEOUT", []
    return json_response(answer, 503, {"Retry-After": "5"})


async def health(request: Request) -> Response:
    status, body = health_report(request.state.spool.stats(), request.state.started_us, VERSION,
                                 request.state.stall_after, **stores_health(request.state.spool_path))
    return json_response(body, status)

