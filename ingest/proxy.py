"""Port 8001 answers every path of API.md: a request for a path the ingest
app does not own is passed on to the query process (query.host:query.port)
and its answer streamed back unchanged, so a client needs one base URL.

`Port8001` picks the app by path before any middleware runs: the query
process applies API keys, request ids, metrics and the access log to what it
answers, so doing them here too only cost CPU (the relay's CPU per read fell
from ~0.4 to ~0.25 ms without them, loadtests/read_cost.py).
A write path with the wrong method still gets the ingest app's own 405.

A small HTTP/1.1 client on asyncio streams with a keep-alive pool (one per
worker process, made after granian forked it): httpx cost ~1.5 ms of CPU per
request here, this ~0.1 ms, and on 2 cores that decides the read rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import BodyTooLarge
from core.http import error_response
from core.middleware import request_id_of
from core.settings import QuerySettings

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2.0
# Between two reads of the answer: a restore of 200k tasks streams steadily,
# but a stats query on a large table may take a while before its first byte.
READ_TIMEOUT_S = 300.0
MAX_IDLE_CONNECTIONS = 32
CHUNK_BYTES = 512 * 1024  # a file download moves in pieces this large: fewer sends, less CPU per MB
# Connection-level headers belong to one hop; this hop sets host and framing.
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
                         b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length",
                         b"expect"})  # granian answered the client's Expect; the relay sends its own
# granian frames the answer again.
_DROPPED_ANSWER_HEADERS = _HOP_BY_HOP - {b"content-length"}
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
# Bodies under these paths (file uploads, up to files.max_bytes) are streamed
# to the query process as they arrive, never gathered here.
STREAMED_PREFIXES = ("/api/v1/files",)
DISCARD_BYTES = 16 * 1024 * 1024  # of a refused body, read on so that its sender sees the answer
DISCARD_S = 5.0


class ClientGone(Exception):
    """The client disconnected before its body was read: nothing to forward."""


class UpstreamClosed(Exception):
    """The query process closed the connection before answering."""


class Port8001:
    """The ASGI app of port 8001: the ingest app for its own paths (and for
    lifespan), the query proxy for every other path."""

    def __init__(self, ingest: ASGIApp, own_paths: Iterable[str], proxy: QueryProxy) -> None:
        self.ingest = ingest
        self.own_paths = frozenset(own_paths)
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.own_paths:
            await self.proxy(scope, receive, send)
        else:
            await self.ingest(scope, receive, send)


class _AnswerKeepingProtocol(asyncio.StreamReaderProtocol):
    """A failed write (the query process answered 413 and closed while the
    body still went out) must not throw away the answer already received:
    asyncio would hand the write's error to the reader, which then refuses
    even buffered bytes. Here the reader just sees the end of the stream; an
    answer cut short still shows, as IncompleteReadError."""

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            logger.debug("query connection lost: %r", exc)
        super().connection_lost(None)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def is_usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class QueryProxy:
    """ASGI app that forwards method, path, query string, headers and body."""

    def __init__(self, query: QuerySettings, max_body_bytes: int) -> None:
        host = "127.0.0.1" if query.host in ("", "0.0.0.0", "::") else query.host  # bound to all: use loopback
        self._host, self._port = host, query.port
        self._authority = (f"[{host}]:{query.port}" if ":" in host else f"{host}:{query.port}").encode()
        self._max_body_bytes = max_body_bytes
        self._idle: list[_Connection] = []

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan and websockets stop at the ingest app
        if scope["path"].startswith(STREAMED_PREFIXES) and scope["method"] not in _IDEMPOTENT:
            await self._stream_request(scope, receive, send)
            return
        try:
            body = await _read_body(receive, self._max_body_bytes)
        except ClientGone:
            return
        except BodyTooLarge as too_large:
            await self._error(scope, too_large.status, too_large.detail, too_large.error_code,
                              {"Connection": "close"}, receive, send)
            return
        request = self._head(scope, len(body)) + body
        try:
            await self._forward(scope["method"], request, send)
        except TimeoutError:
            logger.warning("query process timed out on %s %s", scope["method"], scope["path"])
            await self._error(scope, 504, "The query process did not answer in time.", "QUERY_TIMEOUT", {},
                              receive, send)
        except (OSError, UpstreamClosed, asyncio.IncompleteReadError) as exc:
            logger.warning("query process unavailable for %s %s: %r", scope["method"], scope["path"], exc)
            await self._error(scope, 503, "The query process is not available; retry later.", "QUERY_UNAVAILABLE",
                              {"Retry-After": "1"}, receive, send)

    @staticmethod
    async def _error(scope: Scope, status: int, detail: str, code: str, headers: dict[str, str],
                     receive: Receive, send: Send) -> None:
        # The query process did not answer, so this port gives the request its id.
        headers = {**headers, "X-Request-ID": request_id_of(scope)}
        await error_response(status, detail, code, headers=headers)(scope, receive, send)

    async def _forward(self, method: str, request: bytes, send: Send) -> None:
        conn, reused = await self._acquire()
        answering = False
        try:
            # One timeout for the whole exchange, moved on while a long answer streams.
            async with asyncio.timeout(READ_TIMEOUT_S) as deadline:
                try:
                    head = await _exchange(conn, request)
                except (OSError, UpstreamClosed, asyncio.IncompleteReadError):
                    conn.close()
                    if not reused or method not in _IDEMPOTENT:
                        raise
                    # A pooled connection the query process had closed (it restarted): once more, when safe.
                    conn = await self._connect()
                    head = await _exchange(conn, request)
                answering = True
                keep = await _relay(conn.reader, head, send, method != "HEAD", deadline)
        except (OSError, TimeoutError, UpstreamClosed, asyncio.IncompleteReadError, ValueError) as exc:
            conn.close()
            if not answering:
                raise
            # The answer had started: all that is left is to cut it short.
            logger.warning("query process answer broke off for %s: %r", method, exc)
            return
        if keep and conn.is_usable and len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(conn)
        else:
            conn.close()

    async def _stream_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward a body of any size as it arrives, on a connection of its
        own. The head goes first with `Expect: 100-continue`: the body follows
        only once the query process asks for it, so an answer it gives
        without reading the body (413 for a declared size, 422, 403) is never
        raced by a body it will not read (its close would reset the
        connection, and the reset can destroy the answer before it is read).
        An answer that comes before the body ends is relayed at once and the
        rest of the body is not sent; a client that goes away closes the
        upstream connection, which the query process sees as its client
        going away (it drops the partial upload)."""
        declared = next((v for n, v in scope["headers"] if n == b"content-length"), None)
        is_chunked = declared is None
        try:
            conn = await self._connect()
        except (OSError, TimeoutError) as exc:
            logger.warning("query process unavailable for %s %s: %r", scope["method"], scope["path"], exc)
            await self._error(scope, 503, "The query process is not available; retry later.", "QUERY_UNAVAILABLE",
                              {"Retry-After": "1"}, receive, send)
            return
        answering = False
        sent_all = False
        try:
            conn.writer.write(self._head(scope, None if is_chunked else int(declared or b"0"), b"expect: 100-continue"))
            async with asyncio.timeout(READ_TIMEOUT_S) as deadline:
                head = await conn.reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"HTTP/1.1 100"):
                    pump = asyncio.create_task(_pump(receive, conn.writer, is_chunked))
                    answer = asyncio.create_task(conn.reader.readuntil(b"\r\n\r\n"))
                    await asyncio.wait({pump, answer}, return_when=asyncio.FIRST_COMPLETED)
                    if pump.done() and isinstance(pump.exception(), ClientGone):
                        answer.cancel()
                        return
                    # A body the query process stopped reading (it answered and closed) fails to send;
                    # its answer is read all the same, and only its absence is a 503.
                    head = await answer
                    if not pump.done():
                        pump.cancel()  # answered before the body ended: the rest is not wanted
                    elif pump.exception() is not None:
                        logger.debug("the body's rest was not sent: %r", pump.exception())
                    else:
                        sent_all = True
                answering = True
                await _relay(conn.reader, head, send, scope["method"] != "HEAD", deadline)
            if not sent_all:
                await _discard_rest(receive)
        except (OSError, TimeoutError, UpstreamClosed, asyncio.IncompleteReadError, ValueError) as exc:
            if answering:  # the answer had started: all that is left is to cut it short
                logger.warning("query process answer broke off for %s %s: %r", scope["method"], scope["path"], exc)
                return
            logger.warning("query process unavailable for %s %s: %r", scope["method"], scope["path"], exc)
            await self._error(scope, 503, "The query process is not available; retry later.", "QUERY_UNAVAILABLE",
                              {"Retry-After": "1"}, receive, send)
        finally:
            conn.close()

    async def _acquire(self) -> tuple[_Connection, bool]:
        while self._idle:
            conn = self._idle.pop()
            if conn.is_usable:
                return conn, True
            conn.close()
        return await self._connect(), False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            transport, protocol = await loop.create_connection(
                lambda: _AnswerKeepingProtocol(reader, loop=loop), self._host, self._port)
        return _Connection(reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    def _head(self, scope: Scope, length: int | None, *extra: bytes) -> bytes:
        """The request line and headers (and extra header lines); length None: the body follows chunked."""
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        framing = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
        lines = [b"%s %s%s HTTP/1.1" % (scope["method"].encode(), path, b"?" + query if query else b""),
                 b"host: " + self._authority, framing, *extra]
        lines += [name + b": " + value for name, value in scope["headers"] if name.lower() not in _HOP_BY_HOP]
        host = next((value for name, value in scope["headers"] if name == b"host"), None)
        if host and not any(name == b"x-forwarded-host" for name, _ in scope["headers"]):
            lines.append(b"x-forwarded-host: " + host)  # URLs the query process makes point here, not at it
        client = scope.get("client")
        if client:
            lines.append(b"x-forwarded-for: " + client[0].encode())
        return b"\r\n".join(lines) + b"\r\n\r\n"


async def _exchange(conn: _Connection, request: bytes) -> bytes:
    conn.writer.write(request)  # the transport sends all of it; the answer is awaited next anyway
    try:
        return await conn.reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise UpstreamClosed("closed before answering") from None
        raise


async def _discard_rest(receive: Receive) -> None:
    """Read (and drop) a little more of a body that was answered early: a
    client still sending when the connection closes gets a reset, which can
    destroy the answer before it reads it."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DISCARD_S):
            left = DISCARD_BYTES
            while left > 0:
                message = await receive()
                if message["type"] == "http.disconnect" or not message.get("more_body", False):
                    return
                left -= len(message.get("body", b""))


async def _pump(receive: Receive, writer: asyncio.StreamWriter, is_chunked: bool) -> None:
    """The client's body to the query process, chunk by chunk, with back-pressure."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if is_chunked else chunk)
            await writer.drain()
        if not message.get("more_body", False):
            break
    if is_chunked:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _relay(reader: asyncio.StreamReader, head: bytes, send: Send, has_body: bool,
                 deadline: asyncio.Timeout) -> bool:
    """Stream the answer back byte for byte; True when the connection can be reused."""
    status_line, *header_lines = head[:-4].split(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    out, length, is_chunked, is_close = [], None, False, False
    for line in header_lines:
        name, colon, value = line.partition(b":")
        if not colon:
            continue  # not a header line
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            is_chunked = b"chunked" in value.lower()
        elif name == b"connection":
            is_close = b"close" in value.lower()
        if name not in _DROPPED_ANSWER_HEADERS:
            out.append((name, value))
    if is_chunked:
        length = None
    await send({"type": "http.response.start", "status": status, "headers": out})
    if not has_body or status in (204, 304):
        await send({"type": "http.response.body", "body": b""})
        return not is_close
    if length is not None:
        # Small answers are whole in one read; large ones go on in chunks.
        while length > CHUNK_BYTES:
            data = await reader.readexactly(CHUNK_BYTES)
            length -= CHUNK_BYTES
            await send({"type": "http.response.body", "body": data, "more_body": True})
            _move_on(deadline)
        await send({"type": "http.response.body", "body": await reader.readexactly(length)})
        return not is_close
    if is_chunked:
        await _relay_chunked(reader, send, deadline)
    else:  # HTTP/1.0 style: the body ends when the connection does
        while chunk := await reader.read(CHUNK_BYTES):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            _move_on(deadline)
    await send({"type": "http.response.body", "body": b""})
    return is_chunked and not is_close


def _move_on(deadline: asyncio.Timeout) -> None:
    """The timeout is between two reads: a long restore streams on as long as it makes progress."""
    deadline.reschedule(asyncio.get_running_loop().time() + READ_TIMEOUT_S)


async def _relay_chunked(reader: asyncio.StreamReader, send: Send, deadline: asyncio.Timeout) -> None:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
        if size == 0:
            with contextlib.suppress(asyncio.IncompleteReadError):
                await reader.readuntil(b"\r\n")  # the empty trailer
            return
        data = await reader.readexactly(size + 2)
        await send({"type": "http.response.body", "body": data[:-2], "more_body": True})
        _move_on(deadline)
