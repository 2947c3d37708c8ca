"""/api/v1/translation/archive (API.md "Archive"): list archived sessions,
read one back (its tasks streamed), restore one, and (admin) the archive's
summary and a run now. Restore and run are commands through the spool, like
DELETE: applied by the flusher after every write acknowledged before them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from msgspec import Struct
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from archive.reads import ArchiveReads
from core.auth import ScopedRoute
from core.errors import NotFound, SessionNotFound
from core.http import decode_body, json_response
from core.records import KIND_ARCHIVE, KIND_ARCHIVE_RESTORE, ArchiveCommand, ArchiveRestoreCommand, CommandNotFound
from core.settings import Settings
from core.times import now_us
from persistence_api.archive import ArchivedSessionList, ArchivedSessionSummary, ArchiveRun
from query.management import CommandQueue, answer
from query.params import ParamReader
from query.views import SESSION_STATUSES, iso, session_detail, session_summary, task_view

BASE = "/api/v1/translation/archive"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
TASK_CHUNK = 1000  # tasks encoded per piece of the streamed body
_ENCODER = msgspec.json.Encoder()


class ArchiveFilter(Struct, frozen=True):
    """The list's filters: a cursor is valid only with the filters it was issued for."""
    status: str | None
    created_from: str | None
    created_before: str | None


class ArchivedSessionNotFound(NotFound):
    error_code = "ARCHIVED_SESSION_NOT_FOUND"

    def __init__(self, session_id: str) -> None:
        super().__init__("Archived session not found", session_id=session_id)


def _reads(request: Request) -> ArchiveReads:
    return request.state.archive


async def not_found(request: Request, session_id: str) -> SessionNotFound:
    """The ordinary reads' 404, saying `"archived": true` when the session is in the archive."""
    error = SessionNotFound(session_id)
    if len(session_id) <= 36 and await run_in_threadpool(_reads(request).archived, session_id) is not None:
        error.extra["archived"] = True
    return error


async def list_archived(request: Request) -> Response:
    r = ParamReader(request.query_params)
    status = r.choice("status", SESSION_STATUSES)
    created_from = r.time("from_date", is_upper=False)
    created_before = r.time("to_date", is_upper=True)
    limit = r.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    flt = ArchiveFilter(status, created_from, created_before)
    after = r.keyset_cursor("archived_sessions", flt, 2)
    r.done()
    entries = await run_in_threadpool(_reads(request).index.page, (status,) if status else (), created_from,
                                      created_before, (after[0], after[1]) if after else None, limit + 1)
    more = len(entries) > limit
    entries = entries[:limit]
    items = [ArchivedSessionSummary(**msgspec.structs.asdict(session_summary(e.session)), archived_at=iso(e.archived_at))
             for e in entries]
    cursor = (ParamReader.issue_cursor("archived_sessions", flt, [entries[-1].created_at, entries[-1].session_id])
              if more else None)
    return json_response(ArchivedSessionList(items, cursor))


async def get_archived(request: Request) -> Response:
    session_id = request.path_params["session_id"]
    reads = _reads(request)
    entry = None if len(session_id) > 36 else await run_in_threadpool(reads.archived, session_id)
    if entry is None:
        raise ArchivedSessionNotFound(session_id)
    session, tasks = await run_in_threadpool(reads.read, entry)
    return StreamingResponse(_body(session, tasks, entry.archived_at), media_type="application/json")


async def _body(session: tuple, tasks: list[tuple], archived_at: str) -> AsyncIterator[bytes]:
    yield b'{"session":' + _ENCODER.encode(session_detail(session, now_us())) + b',"tasks":['
    for start in range(0, len(tasks), TASK_CHUNK):
        chunk = _ENCODER.encode([task_view(t) for t in tasks[start:start + TASK_CHUNK]])[1:-1]
        yield b"," + chunk if start else chunk
    yield b'],"archived_at":' + _ENCODER.encode(iso(archived_at)) + b"}"


def archive_routes(settings: Settings) -> list[ScopedRoute]:
    queue = CommandQueue(settings.spool, settings.ingest.flush_timeout)

    async def restore(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        if len(session_id) > 36 or await run_in_threadpool(_reads(request).archived, session_id) is None:
            raise ArchivedSessionNotFound(session_id)
        result = await queue.run(KIND_ARCHIVE_RESTORE, ArchiveRestoreCommand(session_id))
        outcome = "failure" if result is None or isinstance(result, CommandNotFound) else "success"
        await request.state.audit_trail.record(request, "session.archive_restore", "session", session_id, outcome,
                                               "queued" if result is None else type(result).__name__)
        if isinstance(result, CommandNotFound):
            raise ArchivedSessionNotFound(session_id)
        return answer(result, session_id, request)

    async def run(request: Request) -> Response:
        body = await decode_body(request, ArchiveRun, 4096, allow_empty=True)
        days = settings.archive.after_days if body.after_days is None else body.after_days
        if days <= 0 and body.after_days is None:
            days = settings.retention.completed_days  # archiving off by schedule: archive what cleanup would delete
        result = await queue.run(KIND_ARCHIVE, ArchiveCommand(days, settings.archive.tasks_per_run))
        await request.state.audit_trail.record(request, "archive.run", "archive", None,
                                               "success" if result is not None else "failure",
                                               "queued" if result is None else type(result).__name__,
                                               {"after_days": days})
        return answer(result, None, request)

    async def summary(request: Request) -> Response:
        return json_response(await run_in_threadpool(_reads(request).summary))

    return [
        ScopedRoute(BASE, summary, methods=["GET"], access="admin"),
        ScopedRoute(BASE + "/run", run, methods=["POST"], access="admin"),
        ScopedRoute(BASE + "/sessions", list_archived, methods=["GET"], access="read"),
        ScopedRoute(BASE + "/sessions/{session_id}", get_archived, methods=["GET"], access="read"),
        ScopedRoute(BASE + "/sessions/{session_id}/restore", restore, methods=["POST"], access="admin"),
    ]
