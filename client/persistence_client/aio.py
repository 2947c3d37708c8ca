"""The asyncio client: the same methods as PersistenceClient, awaited, and the
same batching writer on a task of the running loop instead of a thread.

    async with AsyncPersistenceClient("http://127.0.0.1:8001") as client:
        client.tasks.put(Task(...))      # plain call: queues, never waits
        await client.flush()

Leaving the `async with` (or `await client.close()`) sends what is queued;
if the program ends without that, the loop it ran on is usually closed, so
at exit the writer sends what it still holds on a loop of its own, for up to
exit_timeout seconds, with new connections (the old ones belonged to the
closed loop). What is still unsent then is logged, and stays in the disk
buffer when there is one.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

import httpx
import msgspec

from persistence_api.audit import AuditEvent, StoredEvent, VerifyResult
from persistence_api.files import File, FileDeleted, PresignedUrl
from persistence_api.system import Health
from persistence_api.translation import (CleanupResult, Deleted, FlushResult, IncompleteSessions, Queued,
                                         RecoveryStatus, Session, SessionDetail, SessionSummary, Stats,
                                         StatusUpdated, Task, TaskView)
from persistence_api.users import (Authenticated, NewUserSession, Revoked, RevokedCount, SessionCreate, User,
                                   UserCreate, UserDeleted, UserPatch, UserSession, UserSessionList, Validated)
from persistence_client import calls
from persistence_client.client import _CHUNK, Source, _body, _measure, _RestoreHead, _RestoreTail, _sink
from persistence_client.disk_buffer import DiskBuffer
from persistence_client.errors import FlushTimeout, TransportError, api_error
from persistence_client.outbox import (Delivery, Item, Outbox, Rejected, WriterStats, by_kind, log_rejected,
                                       record_key)
from persistence_client.protocol import EVENTS, RETRY_STATUSES, SESSIONS, TASKS, Backoff, Call, Kind
from persistence_client.streams import ArrayItems

T = TypeVar("T")
logger = logging.getLogger("persistence_client")
_ENCODER = msgspec.json.Encoder()
_WRITERS: weakref.WeakSet[AsyncBatchWriter] = weakref.WeakSet()


class AsyncBatchWriter:
    """BatchWriter's behaviour (persistence_client.writer) on asyncio."""

    def __init__(self, http: Callable[[], httpx.AsyncClient], *, batch_size: int = 1000,
                 flush_interval: float = 0.2, max_queue: int = 100_000,
                 disk_buffer: str | os.PathLike[str] | None = None,
                 on_rejected: Callable[[Rejected], None] = log_rejected, backoff: Backoff | None = None,
                 exit_timeout: float = 10.0, coalesce: bool = False,
                 reconnect: Callable[[], None] = lambda: None) -> None:
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
        self._reconnect = reconnect  # forget connections made on a loop that is gone
        self._reset()
        _WRITERS.add(self)

    def _reset(self) -> None:
        self._outbox = Outbox(self.max_queue, DiskBuffer(self.disk_buffer) if self.disk_buffer else None)
        self._outbox.adopt()
        self._wake: asyncio.Event | None = None  # made on the loop that runs the sender
        self._acked: asyncio.Condition | None = None
        self._task: asyncio.Task[None] | None = None
        self._flush_target = 0
        self._give_up_at: float | None = None

    def put(self, kind: Kind, record: Any) -> None:
        """Queue one record; raises QueueFull or WriterClosed rather than drop it.
        Call it from the loop's thread."""
        self._outbox.add(kind, _ENCODER.encode(record), record_key(kind, record) if self.coalesce else None)
        self._ensure_sender()
        if len(self._outbox.items) == self.batch_size:
            assert self._wake is not None
            self._wake.set()

    async def flush(self, timeout: float | None = None) -> None:
        target = self._outbox.next_seq - 1
        self._flush_target = max(self._flush_target, target)
        self._ensure_sender()
        assert self._wake is not None and self._acked is not None
        self._wake.set()
        acked = self._acked
        try:
            async with acked:
                await asyncio.wait_for(acked.wait_for(lambda: self._outbox.acked_seq >= target), timeout)
        except TimeoutError:
            raise FlushTimeout(f"{target - self._outbox.acked_seq} records not acknowledged after {timeout} s; "
                               "they stay queued") from None

    async def close(self, timeout: float | None = 10.0) -> None:
        if self._outbox.closed:
            return
        self._outbox.closed = True
        self._give_up_at = None if timeout is None else time.monotonic() + timeout
        if self._task is not None:
            assert self._wake is not None
            self._wake.set()
            await self._task
        unsent = len(self._outbox.items)
        if unsent:
            where = f"; they stay in {self.disk_buffer} for the next start" if self.disk_buffer else ""
            logger.error("closing the writer with %d records unsent after %s s%s", unsent, timeout, where)
        if self._outbox.buffer is not None:
            self._outbox.buffer.close()

    @property
    def stats(self) -> WriterStats:
        return self._outbox.snapshot()

    def _ensure_sender(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._acked = asyncio.Condition()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="persistence-writer")

    async def _run(self) -> None:
        assert self._wake is not None and self._acked is not None
        while True:
            while True:
                flushing = self._flush_target > self._outbox.acked_seq
                wait = self._outbox.due(self.batch_size, self.flush_interval, flushing)
                if wait == 0:
                    break
                if wait is None and self._outbox.closed:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            chunk, sendable = self._outbox.take(self.batch_size)
            try:
                acknowledged, rejected = await self._send(sendable)
            except _GiveUp:
                self._outbox.give_back(chunk)
                return
            except Exception:  # a bug here must not lose the chunk or stop the sending
                logger.exception("the writer failed to send %d records; they stay first in line", len(chunk))
                self._outbox.give_back(chunk)
                try:
                    await self._pause(1.0)
                except _GiveUp:
                    return
                continue
            self._outbox.done(chunk, acknowledged, rejected)
            async with self._acked:
                self._acked.notify_all()

    async def _send(self, chunk: list[Item]) -> tuple[int, int]:
        acknowledged = rejected = 0
        for kind, items in by_kind(chunk):
            delivery = Delivery(kind, items, self.backoff, self.on_rejected, self._outbox.stats)
            while not delivery.finished:
                try:
                    answer = await self._http().post(kind.path, content=delivery.body(),
                                                     headers={"content-type": "application/json"})
                    delay = delivery.on_answer(answer.status_code, answer.content, answer.headers)
                except httpx.TransportError as exc:
                    delay = delivery.on_transport_error(exc)
                if delay:
                    await self._pause(delay)
            acknowledged += delivery.acknowledged
            rejected += delivery.rejected
        return acknowledged, rejected

    async def _pause(self, delay: float) -> None:
        end = time.monotonic() + delay
        assert self._wake is not None
        while (left := end - time.monotonic()) > 0:
            if self._give_up_at is not None and end > self._give_up_at:
                raise _GiveUp
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)

    async def _close_on_a_new_loop(self) -> None:
        if self._outbox.chunk:
            self._outbox.give_back(self._outbox.chunk)
        self._task = None
        self._reconnect()
        self._outbox.closed = False
        self._ensure_sender()
        await self.close(self.exit_timeout)

    def _after_fork_in_child(self) -> None:
        if self._outbox.buffer is not None:
            self._outbox.buffer.forget_after_fork()
        self._reset()


class _GiveUp(Exception):
    pass


def _flush_at_exit() -> None:
    """Writers never closed: send what they hold on a new loop (their own is
    closed by now), with the chunk a dead sender was sending first in line."""
    for writer in list(_WRITERS):
        outbox = writer._outbox
        if outbox.closed or not (outbox.items or outbox.chunk):
            continue
        try:
            asyncio.run(writer._close_on_a_new_loop())
        except Exception:  # at exit: say what happened rather than a traceback into nothing
            logger.exception("sending at exit failed; %d records unsent", len(outbox.items) + outbox.in_flight)


def _after_fork_in_child() -> None:
    for writer in list(_WRITERS):
        writer._after_fork_in_child()


atexit.register(_flush_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)


class AsyncPersistenceClient:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 30.0,
                 batch_size: int = 1000, flush_interval: float = 0.2, max_queue: int = 100_000,
                 disk_buffer: str | os.PathLike[str] | None = None,
                 on_rejected: Callable[[Rejected], None] = log_rejected, exit_timeout: float = 10.0,
                 coalesce: bool = False,
                 read_retries: int = 2, backoff: Backoff | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"x-api-key": api_key} if api_key else {}
        self._timeout = timeout
        self._read_retries = read_retries
        self._backoff = backoff or Backoff()
        self._client: httpx.AsyncClient | None = None
        self._pid = os.getpid()
        self.writer = AsyncBatchWriter(self._http, batch_size=batch_size, flush_interval=flush_interval,
                                       max_queue=max_queue, disk_buffer=disk_buffer, on_rejected=on_rejected,
                                       backoff=self._backoff, exit_timeout=exit_timeout, coalesce=coalesce,
                                       reconnect=self._forget_connection)
        self.sessions = Sessions(self)
        self.tasks = Tasks(self)
        self.recovery = Recovery(self)
        self.files = Files(self)
        self.users = Users(self)
        self.user_sessions = UserSessions(self)
        self.audit = Audit(self)

    async def flush(self, timeout: float | None = None, *, stored: bool = False) -> FlushResult | None:
        await self.writer.flush(timeout)
        if not stored:
            return None
        return await self.run(calls.flush_database())

    async def close(self, timeout: float | None = 10.0) -> None:
        await self.writer.close(timeout)
        if self._client is not None and self._pid == os.getpid():
            await self._client.aclose()
        self._client = None

    async def __aenter__(self) -> AsyncPersistenceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def stats(self) -> WriterStats:
        return self.writer.stats

    async def health(self) -> Health:
        return await self.run(calls.health(), retries=0)

    async def service_stats(self) -> Stats:
        return await self.run(calls.stats())

    def _forget_connection(self) -> None:
        self._client = None  # its loop is closed: neither usable nor closable

    def _http(self) -> httpx.AsyncClient:
        if self._client is None or self._pid != os.getpid():
            self._client = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=self._timeout)
            self._pid = os.getpid()
        return self._client

    async def run(self, call: Call[T], *, content: Any = None, retries: int | None = None) -> T:
        attempts = 1 + ((self._read_retries if retries is None else retries) if call.method == "GET" else 0)
        for attempt in range(attempts):
            try:
                answer = await self._http().request(call.method, call.path, params=call.params,
                                                    content=call.body if content is None else content,
                                                    headers=call.headers)
            except httpx.TransportError as exc:
                if attempt + 1 == attempts:
                    raise TransportError(f"{call.method} {call.path}: {exc}") from exc
                await asyncio.sleep(self._backoff.delay(attempt))
                continue
            if answer.status_code in RETRY_STATUSES and answer.status_code not in call.ok and attempt + 1 < attempts:
                error = api_error(answer.status_code, answer.content, answer.headers)
                await asyncio.sleep(self._backoff.delay(attempt, error.retry_after))
                continue
            return call.decode(answer.status_code, answer.content, answer.headers)
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def stream(self, call: Call[Any]) -> AsyncIterator[httpx.Response]:
        try:
            async with self._http().stream(call.method, call.path, params=call.params, content=call.body,
                                           headers=call.headers) as answer:
                if answer.status_code not in call.ok:
                    await answer.aread()
                    raise api_error(answer.status_code, answer.content, answer.headers)
                yield answer
        except httpx.TransportError as exc:
            raise TransportError(f"{call.method} {call.path}: {exc}") from exc

    async def pages(self, make: Callable[[str | None], Call[Any]]) -> AsyncIterator[Any]:
        cursor: str | None = None
        while True:
            page = await self.run(make(cursor))
            for item in page.items:
                yield item
            cursor = page.next_cursor
            if cursor is None:
                return


class _Area:
    def __init__(self, client: AsyncPersistenceClient) -> None:
        self._c = client


class Sessions(_Area):
    def put(self, session: Session | dict[str, Any]) -> None:
        self._c.writer.put(SESSIONS, session)

    async def get(self, session_id: str) -> SessionDetail:
        return await self._c.run(calls.get_session(session_id))

    def list(self, **filters: Any) -> AsyncIterator[SessionSummary]:
        return self._c.pages(lambda cursor: calls.list_sessions(cursor, **filters))

    def tasks(self, session_id: str, **filters: Any) -> AsyncIterator[TaskView]:
        return self._c.pages(lambda cursor: calls.list_session_tasks(cursor, session_id, **filters))

    async def delete(self, session_id: str) -> Deleted | Queued:
        return await self._c.run(calls.delete_session(session_id))

    async def set_status(self, session_id: str, status: calls.SessionStatus) -> StatusUpdated | Queued:
        return await self._c.run(calls.set_session_status(session_id, status))

    async def cleanup(self, completed_days: int | None = None, failed_days: int | None = None,
                      dry_run: bool = False) -> CleanupResult | Queued:
        return await self._c.run(calls.cleanup(completed_days, failed_days, dry_run))


class Tasks(_Area):
    def put(self, task: Task | dict[str, Any]) -> None:
        self._c.writer.put(TASKS, task)

    async def get(self, task_id: str) -> TaskView:
        return await self._c.run(calls.get_task(task_id))

    def list(self, **filters: Any) -> AsyncIterator[TaskView]:
        return self._c.pages(lambda cursor: calls.list_tasks(cursor, **filters))


class AsyncRestoreStream:
    """RestoreStream's behaviour: `session` first, `async for` the tasks,
    then `tasks_count` and `restored_at`."""

    def __init__(self, answer: httpx.Response) -> None:
        self._chunks = answer.aiter_bytes(_CHUNK)
        self._items = ArrayItems("tasks")
        self._ready: list[bytes] = []
        self.session_id = ""
        self.session: SessionDetail | None = None
        self.tasks_count: int | None = None
        self.restored_at: str | None = None

    async def _start(self) -> None:
        while not self._items.opened:
            chunk = await anext(self._chunks, None)
            if chunk is None:
                break
            self._ready += self._items.feed(chunk)
        head = msgspec.json.decode(self._items.head(), type=_RestoreHead)
        self.session_id, self.session = head.session_id, head.session

    async def __aiter__(self) -> AsyncIterator[TaskView]:
        decoder = msgspec.json.Decoder(TaskView)
        while True:
            for raw in self._ready:
                yield decoder.decode(raw)
            chunk = await anext(self._chunks, None)
            if chunk is None:
                break
            self._ready = self._items.feed(chunk)
        tail = msgspec.json.decode(bytes(self._items.rest), type=_RestoreTail)
        self.tasks_count, self.restored_at = tail.tasks_count, tail.restored_at


class Recovery(_Area):
    async def incomplete_sessions(self) -> IncompleteSessions:
        return await self._c.run(calls.incomplete_sessions())

    async def status(self) -> RecoveryStatus:
        return await self._c.run(calls.recovery_status())

    @contextlib.asynccontextmanager
    async def restore(self, session_id: str) -> AsyncIterator[AsyncRestoreStream]:
        async with self._c.stream(calls.restore(session_id)) as answer:
            stream = AsyncRestoreStream(answer)
            await stream._start()
            yield stream


class Files(_Area):
    async def upload(self, source: Source, filename: str, content_type: str = "application/octet-stream", *,
                     session_id: str | None = None, owner_id: str | None = None,
                     tags: list[str] | None = None) -> File:
        body, size = _body(source)
        return await self._c.run(calls.upload(filename, content_type, session_id=session_id, owner_id=owner_id,
                                              tags=tags, size=size), content=_async_body(body))

    async def upload_presigned(self, source: bytes | str | os.PathLike[str], filename: str,
                               content_type: str = "application/octet-stream", *, session_id: str | None = None,
                               owner_id: str | None = None, tags: list[str] | None = None) -> File:
        size, digest = _measure(source)
        upload = await self._c.run(calls.start_upload(filename, content_type, size, session_id=session_id,
                                                      owner_id=owner_id, tags=tags))
        body, _ = _body(source)
        try:
            async with httpx.AsyncClient(timeout=self._c._timeout) as store:
                put = await store.put(upload.url, content=_async_body(body), headers=upload.headers)
        except httpx.TransportError as exc:
            raise TransportError(f"PUT to the presigned upload URL: {exc}") from exc
        if not 200 <= put.status_code < 300:
            raise api_error(put.status_code, put.content, put.headers)
        return await self._c.run(calls.complete_upload(upload.file_id, digest))

    async def get(self, file_id: str) -> File:
        return await self._c.run(calls.get_file(file_id))

    @contextlib.asynccontextmanager
    async def open(self, file_id: str,
                   byte_range: tuple[int, int | None] | None = None) -> AsyncIterator[AsyncIterator[bytes]]:
        async with self._c.stream(calls.file_content(file_id, byte_range)) as answer:
            yield answer.aiter_bytes(_CHUNK)

    async def download(self, file_id: str, target: str | os.PathLike[str] | IO[bytes]) -> int:
        written = 0
        async with self.open(file_id) as chunks:
            with _sink(target) as out:
                async for chunk in chunks:
                    out.write(chunk)
                    written += len(chunk)
        return written

    async def presign(self, file_id: str, expires_in: int = 900) -> PresignedUrl:
        return await self._c.run(calls.presign(file_id, expires_in))

    def list(self, **filters: Any) -> AsyncIterator[File]:
        return self._c.pages(lambda cursor: calls.list_files(cursor, **filters))

    async def delete(self, file_id: str) -> FileDeleted:
        return await self._c.run(calls.delete_file(file_id))


class Users(_Area):
    async def create(self, user: UserCreate) -> User:
        return await self._c.run(calls.create_user(user))

    async def get(self, user_id: str) -> User:
        return await self._c.run(calls.get_user(user_id))

    async def update(self, user_id: str, patch: UserPatch) -> User:
        return await self._c.run(calls.update_user(user_id, patch))

    async def delete(self, user_id: str) -> UserDeleted:
        return await self._c.run(calls.delete_user(user_id))

    def list(self, **filters: Any) -> AsyncIterator[User]:
        return self._c.pages(lambda cursor: calls.list_users(cursor, **filters))

    async def authenticate(self, login: str, password: str) -> Authenticated:
        return await self._c.run(calls.authenticate(login, password))


class UserSessions(_Area):
    async def create(self, request: SessionCreate) -> NewUserSession:
        return await self._c.run(calls.open_user_session(request))

    async def validate(self, token: str) -> Validated:
        return await self._c.run(calls.validate_user_session(token))

    async def set_data(self, token: str, data: dict[str, Any]) -> UserSession:
        return await self._c.run(calls.set_user_session_data(token, data))

    async def revoke(self, token: str) -> Revoked:
        return await self._c.run(calls.revoke_user_session(token))

    async def revoke_id(self, session_id: str) -> Revoked:
        return await self._c.run(calls.revoke_user_session_id(session_id))

    async def of_user(self, user_id: str) -> UserSessionList:
        return await self._c.run(calls.list_user_sessions(user_id))

    async def revoke_all(self, user_id: str) -> RevokedCount:
        return await self._c.run(calls.revoke_all_user_sessions(user_id))


class Audit(_Area):
    def put(self, event: AuditEvent | dict[str, Any]) -> None:
        self._c.writer.put(EVENTS, calls.complete_event(event))

    def search(self, q: str | None = None, **filters: Any) -> AsyncIterator[StoredEvent]:
        wanted = calls.event_filters(q=q, **filters)
        return self._c.pages(lambda cursor: calls.list_events(cursor, wanted))

    async def get(self, event_id: str) -> StoredEvent:
        return await self._c.run(calls.get_event(event_id))

    async def export(self, **filters: Any) -> AsyncIterator[StoredEvent]:
        decoder = msgspec.json.Decoder(StoredEvent)
        async with self._c.stream(calls.export_events(calls.event_filters(**filters))) as answer:
            tail = b""
            async for chunk in answer.aiter_bytes(_CHUNK):
                lines = (tail + chunk).split(b"\n")
                tail = lines.pop()
                for line in lines:
                    if line.strip():
                        yield decoder.decode(line)
            if tail.strip():
                yield decoder.decode(tail)

    async def export_to(self, target: str | os.PathLike[str] | IO[bytes],
                        format: Literal["ndjson", "csv"] = "ndjson", **filters: Any) -> int:
        written = 0
        async with self._c.stream(calls.export_events(calls.event_filters(**filters), format)) as answer:
            with _sink(target) as out:
                async for chunk in answer.aiter_bytes(_CHUNK):
                    out.write(chunk)
                    written += len(chunk)
        return written

    async def verify(self, since: Any = None, until: Any = None) -> VerifyResult:
        return await self._c.run(calls.verify_events(since, until))


def _async_body(body: Any) -> bytes | AsyncIterator[bytes]:
    """httpx.AsyncClient streams only async iterables (bytes go as they are)."""
    if isinstance(body, bytes):
        return body
    return _chunks(body)


async def _chunks(body: Any) -> AsyncIterator[bytes]:
    for chunk in body:
        yield chunk
