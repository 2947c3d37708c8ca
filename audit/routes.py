"""GET /api/v1/audit/events, /events/{event_id}, /export and /verify."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from core import metrics
from persistence_api.audit import EVENT_FIELDS, MAX_OCCURRED_US, MIN_OCCURRED_US, OUTCOMES, EventPage, StoredEvent
from core.auth import ScopedRoute
from core.errors import ClientError
from core.http import json_response
from core.times import to_us
from plugins.audit.store import AuditLog, EventFilter
from plugins.audit.text import words
from query.params import ParamReader

API = "/api/v1/audit"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_Q_CHARS = 1024
_LINES = msgspec.json.Encoder()


class AuditEventNotFound(ClientError):
    status = 404
    error_code = "AUDIT_EVENT_NOT_FOUND"

    def __init__(self, event_id: str) -> None:
        super().__init__(f"No audit event {event_id!r} is stored.")


def _log(request: Request) -> AuditLog:
    return request.state.audit_log


def _filter(r: ParamReader) -> EventFilter:
    q = r.text("q", MAX_Q_CHARS)
    found: list[str] = []
    if q is not None:
        try:
            found = words(q)
        except ValueError as exc:
            r.fail("q", str(exc))
    return EventFilter(actor_id=r.text("actor_id", 128), action=r.text("action", 64),
                       resource_type=r.text("resource_type", 64), resource_id=r.text("resource_id", 255),
                       outcome=r.choice("outcome", OUTCOMES), from_us=_bound(r, "from"),
                       to_us=_bound(r, "to"), words=tuple(found))


def _bound(r: ParamReader, name: str) -> int | None:
    """A bound on occurred_at in microseconds (`to` is exclusive, as `from` is inclusive: read alike)."""
    text = r.time(name, is_upper=False)  # storage text, clamped to what any store holds
    if text is None:
        return None
    us = to_us(datetime.fromisoformat(text))
    return min(max(us, MIN_OCCURRED_US), MAX_OCCURRED_US)


async def list_events(request: Request) -> Response:
    r = ParamReader(request.query_params)
    flt = _filter(r)
    limit = r.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    after = r.keyset_cursor("audit_events", flt, 1)
    r.done()
    before = int(after[0]) if after else None
    started = time.perf_counter()
    items, next_pos = await request.state.read_threads.run(_log(request).page, flt, before, limit)
    metrics.AUDIT_SEARCH_SECONDS.labels("text" if flt.words else "filter").observe(time.perf_counter() - started)
    cursor = r.issue_cursor("audit_events", flt, [next_pos]) if next_pos is not None else None
    return json_response(EventPage(items, cursor))


async def get_event(request: Request) -> Response:
    event_id = request.path_params["event_id"]
    event = await request.state.read_threads.run(_log(request).get, event_id) if len(event_id) <= 64 else None
    if event is None:
        raise AuditEventNotFound(event_id)
    return json_response(event)


async def export_events(request: Request) -> Response:
    r = ParamReader(request.query_params)
    flt = _filter(r)
    form = r.choice("format", ("ndjson", "csv"), "ndjson")
    r.done()
    chunks = _log(request).export(flt)
    threads = request.state.read_threads
    first = await threads.run(next, chunks, None)  # a database that is away answers 503 before any byte is sent
    encode = _csv_lines if form == "csv" else _ndjson_lines

    async def body() -> AsyncIterator[bytes]:
        if form == "csv":
            yield _csv_header()
        chunk = first
        while chunk is not None:
            yield encode(chunk)
            chunk = await threads.run(next, chunks, None)

    name = f"audit-events.{form}"
    media = "text/csv; charset=utf-8" if form == "csv" else "application/x-ndjson"
    return StreamingResponse(body(), media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _ndjson_lines(chunk: list[StoredEvent]) -> bytes:
    return _LINES.encode_lines(chunk)


def _csv_header() -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(EVENT_FIELDS)
    return out.getvalue().encode()


def _csv_lines(chunk: list[StoredEvent]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    for e in chunk:
        writer.writerow(_csv_row(e))
    return out.getvalue().encode()


def _csv_row(e: StoredEvent) -> Iterator[object]:
    for name in EVENT_FIELDS:
        value = getattr(e, name)
        if isinstance(value, msgspec.Raw):
            yield bytes(value).decode()
        else:
            yield "" if value is None else value


async def verify(request: Request) -> Response:
    r = ParamReader(request.query_params)
    start, end = r.time("from", is_upper=False), r.time("to", is_upper=False)  # [from, to)
    r.done()
    return json_response(await request.state.read_threads.run(_log(request).verify, start, end))


ROUTES = [
    ScopedRoute(f"{API}/events", list_events, methods=["GET"], access="read"),
    ScopedRoute(f"{API}/events/{{event_id}}", get_event, methods=["GET"], access="read"),
    ScopedRoute(f"{API}/export", export_events, methods=["GET"], access="read"),
    ScopedRoute(f"{API}/verify", verify, methods=["GET"], access="read"),
]
