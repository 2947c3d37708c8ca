"""The threaded client: one object per service, safe to share between threads
and across fork().

    client = PersistenceClient("http://127.0.0.1:8001", api_key="...")
    client.tasks.put(Task(...))          # queued, sent in batches in the background
    client.flush()                       # everything put so far is acknowledged
    for s in client.sessions.list(status="processing"): ...
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
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
from persistence_client.errors import TransportError, api_error
from persistence_client.outbox import Rejected, WriterStats, log_rejected
from persistence_client.protocol import EVENTS, RETRY_STATUSES, SESSIONS, TASKS, Backoff, Call
from persistence_client.streams import ArrayItems, ndjson_lines
from persistence_client.writer import BatchWriter

T = TypeVar("T")
Source = bytes | str | os.PathLike[str] | IO[bytes] | Iterable[bytes]
_CHUNK = 1024 * 1024


class PersistenceClient:
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
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._pid = os.getpid()
        self.writer = BatchWriter(self._http, batch_size=batch_size, flush_interval=flush_interval,
                                  max_queue=max_queue, disk_buffer=disk_buffer, on_rejected=on_rejected,
                                  backoff=self._backoff, exit_timeout=exit_timeout, coalesce=coalesce)
        self.sessions = Sessions(self)
        self.tasks = Tasks(self)
        self.recovery = Recovery(self)
        self.files = Files(self)
        self.users = Users(self)
        self.user_sessions = UserSessions(self)
        self.audit = Audit(self)

    # -- the writer ---------------------------------------------------------------

    def flush(self, timeout: float | None = None, *, stored: bool = False) -> FlushResult | None:
        """Return once everything put before this call is acknowledged (in the
        service's spool). With stored=True, also wait until the service has
        written it to its database (POST /flush) and return its counters."""
        self.writer.flush(timeout)
        return self.run(calls.flush_database()) if stored else None

    def close(self, timeout: float | None = 10.0) -> None:
        """Send what is queued (up to timeout seconds), then close connections."""
        self.writer.close(timeout)
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None

    def __enter__(self) -> PersistenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> WriterStats:
        return self.writer.stats

    # -- system ---------------------------------------------------------------------

    def health(self) -> Health:
        return self.run(calls.health(), retries=0)

    def service_stats(self) -> Stats:
        return self.run(calls.stats())

    # -- executing Calls --------------------------------------------------------------

    def _http(self) -> httpx.Client:
        """This process's connection pool: after fork() the child makes its own
        (sockets shared with the parent would mix two conversations)."""
        client = self._client
        if client is None or self._pid != os.getpid():
            if self._pid != os.getpid():
                self._client_lock = threading.Lock()  # the parent's may have been held at fork()
            with self._client_lock:
                if self._client is None or self._pid != os.getpid():
                    self._client = httpx.Client(base_url=self.base_url, headers=self._headers,
                                                timeout=self._timeout)
                    self._pid = os.getpid()
                client = self._client
        return client

    def run(self, call: Call[T], *, content: Any = None, retries: int | None = None) -> T:
        """Send one request and decode its answer; a GET is tried again on a
        broken connection, 408, 429 and 5xx (honouring Retry-After)."""
        attempts = 1 + ((self._read_retries if retries is None else retries) if call.method == "GET" else 0)
        for attempt in range(attempts):
            try:
                answer = self._http().request(call.method, call.path, params=call.params,
                                              content=call.body if content is None else content,
                                              headers=call.headers)
            except httpx.TransportError as exc:
                if attempt + 1 == attempts:
                    raise TransportError(f"{call.method} {call.path}: {exc}") from exc
                time.sleep(self._backoff.delay(attempt))
                continue
            if answer.status_code in RETRY_STATUSES and answer.status_code not in call.ok and attempt + 1 < attempts:
                error = api_error(answer.status_code, answer.content, answer.headers)
                time.sleep(self._backoff.delay(attempt, error.retry_after))
                continue
            return call.decode(answer.status_code, answer.content, answer.headers)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def stream(self, call: Call[Any]) -> Iterator[httpx.Response]:
        """An answer to read as it arrives (restore, downloads, export)."""
        try:
            with self._http().stream(call.method, call.path, params=call.params, content=call.body,
                                     headers=call.headers) as answer:
                if answer.status_code not in call.ok:
                    answer.read()
                    raise api_error(answer.status_code, answer.content, answer.headers)
                yield answer
        except httpx.TransportError as exc:
            raise TransportError(f"{call.method} {call.path}: {exc}") from exc

    def pages(self, make: Callable[[str | None], Call[Any]]) -> Iterator[Any]:
        """Every item of a list, page after page by next_cursor."""
        cursor: str | None = None
        while True:
            page = self.run(make(cursor))
            yield from page.items
            cursor = page.next_cursor
            if cursor is None:
                return


class _Area:
    def __init__(self, client: PersistenceClient) -> None:
        self._c = client


class Sessions(_Area):
    def put(self, session: Session | dict[str, Any], wait: float = 0.0) -> None:
        """Queue a session write (an upsert of the whole record); never waits on
        the network. `wait`: seconds to wait for room when max_queue records
        wait already (then QueueFull)."""
        self._c.writer.put(SESSIONS, session, wait)

    def get(self, session_id: str) -> SessionDetail:
        return self._c.run(calls.get_session(session_id))

    def list(self, **filters: Any) -> Iterator[SessionSummary]:
        """Every session matching status, from_date, to_date (sort_by, order, page_size)."""
        return self._c.pages(lambda cursor: calls.list_sessions(cursor, **filters))

    def tasks(self, session_id: str, **filters: Any) -> Iterator[TaskView]:
        """The session's tasks by sheet, row, column (filters: status, sheet_name)."""
        return self._c.pages(lambda cursor: calls.list_session_tasks(cursor, session_id, **filters))

    def delete(self, session_id: str) -> Deleted | Queued:
        return self._c.run(calls.delete_session(session_id))

    def set_status(self, session_id: str, status: calls.SessionStatus) -> StatusUpdated | Queued:
        return self._c.run(calls.set_session_status(session_id, status))

    def cleanup(self, completed_days: int | None = None, failed_days: int | None = None,
                dry_run: bool = False) -> CleanupResult | Queued:
        return self._c.run(calls.cleanup(completed_days, failed_days, dry_run))


class Tasks(_Area):
    def put(self, task: Task | dict[str, Any], wait: float = 0.0) -> None:
        """Queue a task write; never waits on the network."""
        self._c.writer.put(TASKS, task, wait)

    def get(self, task_id: str) -> TaskView:
        return self._c.run(calls.get_task(task_id))

    def list(self, **filters: Any) -> Iterator[TaskView]:
        """Every task matching session_id, status, from_date, to_date."""
        return self._c.pages(lambda cursor: calls.list_tasks(cursor, **filters))


class RestoreStream:
    """A restore read as it arrives: `session` first, then iterate the open
    tasks; `tasks_count` and `restored_at` once they have all been read."""

    def __init__(self, answer: httpx.Response) -> None:
        self._chunks = answer.iter_bytes(_CHUNK)
        self._items = ArrayItems("tasks")
        self._ready: list[bytes] = []
        while not self._items.opened:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._ready += self._items.feed(chunk)
        head = msgspec.json.decode(self._items.head(), type=_RestoreHead)
        self.session_id = head.session_id
        self.session = head.session
        self.tasks_count: int | None = None
        self.restored_at: str | None = None

    def __iter__(self) -> Iterator[TaskView]:
        decoder = msgspec.json.Decoder(TaskView)
        while True:
            for raw in self._ready:
                yield decoder.decode(raw)
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._ready = self._items.feed(chunk)
        tail = msgspec.json.decode(bytes(self._items.rest), type=_RestoreTail)
        self.tasks_count, self.restored_at = tail.tasks_count, tail.restored_at


class _RestoreHead(msgspec.Struct):
    session_id: str
    session: SessionDetail


class _RestoreTail(msgspec.Struct):
    tasks_count: int
    restored_at: str


class Recovery(_Area):
    def incomplete_sessions(self) -> IncompleteSessions:
        return self._c.run(calls.incomplete_sessions())

    def status(self) -> RecoveryStatus:
        return self._c.run(calls.recovery_status())

    @contextlib.contextmanager
    def restore(self, session_id: str) -> Iterator[RestoreStream]:
        """with client.recovery.restore(sid) as r: r.session; for task in r: ..."""
        with self._c.stream(calls.restore(session_id)) as answer:
            yield RestoreStream(answer)


class Files(_Area):
    def upload(self, source: Source, filename: str, content_type: str = "application/octet-stream", *,
               session_id: str | None = None, owner_id: str | None = None,
               tags: list[str] | None = None) -> File:
        """Upload bytes, a path, a binary file or an iterable of chunks, streamed."""
        body, size = _body(source)
        return self._c.run(calls.upload(filename, content_type, session_id=session_id, owner_id=owner_id,
                                        tags=tags, size=size), content=body)

    def upload_presigned(self, source: bytes | str | os.PathLike[str], filename: str,
                         content_type: str = "application/octet-stream", *, session_id: str | None = None,
                         owner_id: str | None = None, tags: list[str] | None = None) -> File:
        """Upload straight to the store by a presigned PUT, then complete it
        (the service checks the size and the SHA-256)."""
        size, digest = _measure(source)
        upload = self._c.run(calls.start_upload(filename, content_type, size, session_id=session_id,
                                                owner_id=owner_id, tags=tags))
        body, _ = _body(source)
        try:
            put = httpx.put(upload.url, content=body, headers=upload.headers, timeout=self._c._timeout)
        except httpx.TransportError as exc:
            raise TransportError(f"PUT to the presigned upload URL: {exc}") from exc
        if not 200 <= put.status_code < 300:
            raise api_error(put.status_code, put.content, put.headers)
        return self._c.run(calls.complete_upload(upload.file_id, digest))

    def get(self, file_id: str) -> File:
        return self._c.run(calls.get_file(file_id))

    @contextlib.contextmanager
    def open(self, file_id: str, byte_range: tuple[int, int | None] | None = None) -> Iterator[Iterator[bytes]]:
        """with client.files.open(fid) as chunks: for chunk in chunks: ... (streamed)"""
        with self._c.stream(calls.file_content(file_id, byte_range)) as answer:
            yield answer.iter_bytes(_CHUNK)

    def download(self, file_id: str, target: str | os.PathLike[str] | IO[bytes]) -> int:
        """Write the content to a path or a binary file; returns the byte count."""
        written = 0
        with self.open(file_id) as chunks, _sink(target) as out:
            for chunk in chunks:
                out.write(chunk)
                written += len(chunk)
        return written

    def presign(self, file_id: str, expires_in: int = 900) -> PresignedUrl:
        return self._c.run(calls.presign(file_id, expires_in))

    def list(self, **filters: Any) -> Iterator[File]:
        """Newest first; filters: session_id, owner_id, content_type, tag, created_from, created_to."""
        return self._c.pages(lambda cursor: calls.list_files(cursor, **filters))

    def delete(self, file_id: str) -> FileDeleted:
        return self._c.run(calls.delete_file(file_id))


class Users(_Area):
    def create(self, user: UserCreate) -> User:
        return self._c.run(calls.create_user(user))

    def get(self, user_id: str) -> User:
        return self._c.run(calls.get_user(user_id))

    def update(self, user_id: str, patch: UserPatch) -> User:
        return self._c.run(calls.update_user(user_id, patch))

    def delete(self, user_id: str) -> UserDeleted:
        return self._c.run(calls.delete_user(user_id))

    def list(self, **filters: Any) -> Iterator[User]:
        """filters: status, role, q (a prefix of username, email or display name)."""
        return self._c.pages(lambda cursor: calls.list_users(cursor, **filters))

    def authenticate(self, login: str, password: str) -> Authenticated:
        return self._c.run(calls.authenticate(login, password))


class UserSessions(_Area):
    def create(self, request: SessionCreate) -> NewUserSession:
        return self._c.run(calls.open_user_session(request))

    def validate(self, token: str) -> Validated:
        return self._c.run(calls.validate_user_session(token))

    def set_data(self, token: str, data: dict[str, Any]) -> UserSession:
        return self._c.run(calls.set_user_session_data(token, data))

    def revoke(self, token: str) -> Revoked:
        return self._c.run(calls.revoke_user_session(token))

    def revoke_id(self, session_id: str) -> Revoked:
        return self._c.run(calls.revoke_user_session_id(session_id))

    def of_user(self, user_id: str) -> UserSessionList:
        return self._c.run(calls.list_user_sessions(user_id))

    def revoke_all(self, user_id: str) -> RevokedCount:
        return self._c.run(calls.revoke_all_user_sessions(user_id))


class Audit(_Area):
    def put(self, event: AuditEvent | dict[str, Any], wait: float = 0.0) -> None:
        """Queue an event; its event_id and occurred_at are filled in now if
        absent, so a batch sent twice stores it once."""
        self._c.writer.put(EVENTS, calls.complete_event(event), wait)

    def search(self, q: str | None = None, **filters: Any) -> Iterator[StoredEvent]:
        """Newest first; filters: actor_id, action, resource_type, resource_id,
        outcome, since (inclusive), until (exclusive); q: every word must occur."""
        wanted = calls.event_filters(q=q, **filters)
        return self._c.pages(lambda cursor: calls.list_events(cursor, wanted))

    def get(self, event_id: str) -> StoredEvent:
        return self._c.run(calls.get_event(event_id))

    def export(self, **filters: Any) -> Iterator[StoredEvent]:
        """Every matching event, oldest first, streamed (NDJSON)."""
        decoder = msgspec.json.Decoder(StoredEvent)
        with self._c.stream(calls.export_events(calls.event_filters(**filters))) as answer:
            for line in ndjson_lines(answer.iter_bytes(_CHUNK)):
                yield decoder.decode(line)

    def export_to(self, target: str | os.PathLike[str] | IO[bytes], format: Literal["ndjson", "csv"] = "ndjson",
                  **filters: Any) -> int:
        """Write the export as it arrives to a path or binary file; returns the byte count."""
        written = 0
        with self._c.stream(calls.export_events(calls.event_filters(**filters), format)) as answer, \
                _sink(target) as out:
            for chunk in answer.iter_bytes(_CHUNK):
                out.write(chunk)
                written += len(chunk)
        return written

    def verify(self, since: Any = None, until: Any = None) -> VerifyResult:
        return self._c.run(calls.verify_events(since, until))


# -- file bodies --------------------------------------------------------------------

def _body(source: Source) -> tuple[Any, int | None]:
    """What httpx sends, and its size when known (a path is streamed from disk)."""
    if isinstance(source, bytes):
        return source, len(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        return _file_chunks(path), path.stat().st_size
    if hasattr(source, "read"):
        return iter(lambda: source.read(_CHUNK), b""), None  # type: ignore[union-attr]
    return source, None


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _measure(source: bytes | str | os.PathLike[str]) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    for chunk in ([source] if isinstance(source, bytes) else _file_chunks(Path(source))):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


@contextlib.contextmanager
def _sink(target: str | os.PathLike[str] | IO[bytes]) -> Iterator[IO[bytes]]:
    if isinstance(target, str | os.PathLike):
        with open(target, "wb") as out:
            yield out
    else:
        yield target
