"""Read and recovery handlers. Every database call runs in one of the
process's read threads (query.read_threads), at most READ_CONNECTIONS at
once (the reader's pool size), so the event loop keeps answering /health
while a slow read runs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from archive.routes import not_found
from core.errors import SessionNotFound, TaskNotFound
from core.http import json_response
from query.openapi_types import IncompleteSessions
from core.times import iso_z, now_us
from plugins.reader import OPEN_STATUSES, Page, PageRequest, Reader, ReadError, SessionFilter, TaskFilter
from query import params
from query.count_cache import CountCache
from query.params import ListQuery
from query.views import (
    ListPage,
    SessionTaskPage,
    Stats,
    recovery_status_body,
    session_detail,
    session_summary,
    stats_body,
    task_view,
    total_pages,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
RESTORE_CHUNK_ROWS = 1000
_ENCODER = msgspec.json.Encoder()


async def _db(request: Request, fn: Callable[..., T], *args: Any) -> T:
    return await request.state.read_threads.run(fn, *args)


def _total(page: Page, query: ListQuery, known: int | None, count: Callable[[], int]) -> int:
    if query.cursor:
        return query.cursor.total  # counted for the first page, carried in the cursor
    if query.page == 1 and not page.has_more:
        return len(page.rows)  # the whole list is on this page: no COUNT needed
    return known if known is not None else count()


def _page_and_total(fetch: Callable[[Any, PageRequest], Page], count: Callable[[Any], int],
                    flt: Any, query: ListQuery, known: int | None) -> tuple[Page, int]:
    page = fetch(flt, query.request())
    return page, _total(page, query, known, lambda: count(flt))


def _session_tasks(reader: Reader, flt: TaskFilter, query: ListQuery, known: int | None) -> tuple[Page, int] | None:
    assert flt.session_id is not None  # a session's tasks page always names its session
    page = reader.tasks(flt, query.request())
    # Tasks reach the sink only with their session, so rows prove it exists.
    if not page.rows and reader.session(flt.session_id) is None:
        return None
    return page, _total(page, query, known, lambda: reader.count_tasks(flt))


async def _counted(request: Request, flt: Any, query: ListQuery,
                   read: Callable[[int | None], tuple[Page, int] | None]) -> tuple[Page, int] | None:
    """Run read(known total) with the total this process already counted for
    the same filter at the same sink version, and remember the one it counts.
    The filter is the key: SessionFilter and TaskFilter never compare equal."""
    counts: CountCache = request.state.counts
    version = request.state.spool.sink_version()
    found = await _db(request, read, counts.get(version, flt))
    if found is not None and not query.cursor:
        counts.put(version, flt, found[1])
    return found


def _list_page(query: ListQuery, page: Page, total: int, items: list[Any]) -> ListPage:
    return ListPage(total=total, page=query.number, page_size=query.page_size,
                    total_pages=total_pages(total, query.page_size), items=items,
                    next_cursor=query.next_cursor(page, total))


async def list_sessions(request: Request) -> Response:
    flt, query = params.session_list(request.query_params)
    reader: Reader = request.state.reader
    found = await _counted(request, flt, query, lambda known: _page_and_total(
        reader.sessions, reader.count_sessions, flt, query, known))
    assert found is not None
    page, total = found
    return json_response(_list_page(query, page, total, [session_summary(r) for r in page.rows]))


async def get_session(request: Request) -> Response:
    session_id = request.path_params["session_id"]
    row = await _db(request, request.state.reader.session, session_id)
    if row is None:
        raise await not_found(request, session_id)
    return json_response(session_detail(row, now_us()))


async def list_session_tasks(request: Request) -> Response:
    session_id = request.path_params["session_id"]
    flt, query = params.session_tasks(request.query_params, session_id)
    reader: Reader = request.state.reader
    found = await _counted(request, flt, query, lambda known: _session_tasks(reader, flt, query, known))
    if found is None:
        raise await not_found(request, session_id)
    page, total = found
    body = _list_page(query, page, total, [task_view(r) for r in page.rows])
    return json_response(SessionTaskPage(session_id, *msgspec.structs.astuple(body)))


async def get_task(request: Request) -> Response:
    task_id = request.path_params["task_id"]
    row = await _db(request, request.state.reader.task, task_id)
    if row is None:
        raise TaskNotFound(task_id)
    return json_response(task_view(row))


async def list_tasks(request: Request) -> Response:
    flt, query = params.task_list(request.query_params)
    reader: Reader = request.state.reader
    found = await _counted(request, flt, query, lambda known: _page_and_total(
        reader.tasks, reader.count_tasks, flt, query, known))
    assert found is not None
    page, total = found
    return json_response(_list_page(query, page, total, [task_view(r) for r in page.rows]))


def _incomplete_sessions(reader: Reader) -> list[tuple]:
    flt = SessionFilter(statuses=OPEN_STATUSES)
    rows: list[tuple] = []
    page = reader.sessions(flt, PageRequest(limit=RESTORE_CHUNK_ROWS))
    rows += page.rows
    while page.has_more:
        page = reader.sessions(flt, PageRequest(limit=RESTORE_CHUNK_ROWS, after=page.last_key))
        rows += page.rows
    return rows


async def incomplete_sessions(request: Request) -> Response:
    rows = await _db(request, _incomplete_sessions, request.state.reader)
    return json_response(IncompleteSessions(len(rows), [session_summary(r) for r in rows]))


async def recovery_status(request: Request) -> Response:
    counts = await _db(request, request.state.reader.recovery_counts)
    return json_response(recovery_status_body(counts, now_us()))


async def stats(request: Request) -> Response:
    async def compute() -> Stats:
        return stats_body(await _db(request, request.state.reader.stats), now_us())
    return json_response(await request.state.stats_cache.get(request.state.spool.sink_version(), compute))


async def restore(request: Request) -> Response:
    """The session and its open tasks, streamed: tasks are read by keyset in
    chunks of RESTORE_CHUNK_ROWS and encoded as they come, so memory stays
    bounded whatever their number. tasks_count follows the tasks: it counts
    exactly what was sent."""
    session_id = request.path_params["session_id"]
    reader: Reader = request.state.reader
    row = await _db(request, reader.session, session_id)
    if row is None:
        raise SessionNotFound(session_id)
    # The first chunk is read before the 200 goes out, so a database error is still a 503.
    first = await _db(request, reader.open_tasks, session_id, None, RESTORE_CHUNK_ROWS)
    return StreamingResponse(_restore_body(request, row, first), media_type="application/json")


async def _restore_body(request: Request, row: tuple, page: Page) -> AsyncIterator[bytes]:
    now = now_us()
    session_id = row[0]
    yield (b'{"session_id":' + _ENCODER.encode(session_id) + b',"session":'
           + _ENCODER.encode(session_detail(row, now)) + b',"tasks":[')
    count = 0
    while True:
        if page.rows:
            chunk = _ENCODER.encode([task_view(r) for r in page.rows])[1:-1]
            yield b"," + chunk if count else chunk
            count += len(page.rows)
        if not page.has_more:
            break
        try:
            page = await _db(request, request.state.reader.open_tasks, session_id, page.last_key,
                             RESTORE_CHUNK_ROWS)
        except ReadError:
            # The 200 is out: all we can do is cut the body short, which no JSON parser accepts.
            logger.error("restore of session %s cut off after %d tasks", session_id, count)
            raise
    yield b'],"tasks_count":%d,"restored_at":%s}' % (count, _ENCODER.encode(iso_z(now)))
