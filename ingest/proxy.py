"""Port 8001 answers every path of API.md: a request the ingest app has no
route for is passed on to the query process (query.host:query.port) and its
answer streamed back unchanged, so a client needs one base URL.

Used as the ingest router's default app, it sees exactly the requests that
match no write route; a write path with the wrong method still gets the
ingest app's own 405.

A small HTTP/1.1 client on asyncio streams with a keep-alive pool (one per
worker process, made after granian forked it): httpx cost ~1.5 ms of CPU per
request here, this ~0.1 ms, and on 2 cores that decides the read rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.types import Receive, Scope, Send

from core.http import error_response
from core.settings import QuerySettings

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2.0
# Between two reads of the answer: a restore of 200k tasks streams steadily,
# but a stats query on a large table may take a while before its first byte.
READ_TIMEOUT_S = 300.0
MAX_IDLE_CONNECTIONS = 32
CHUNK_BYTES = 65536
# Connection-level headers belong to one hop; this hop sets host and framing.
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
                         b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length"})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyTooLarge(Exception):
    """The request body is larger than max_body_bytes."""


class ClientGone(Exception):
    """The client disconnected before its body was read: nothing to forward."""


class UpstreamClosed(Exception):
    """The query process closed the connection before answering."""


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
        try:
            body = await _read_body(receive, self._max_body_bytes)
        except ClientGone:
            return
        except BodyTooLarge:
            await error_response(413, f"the body is larger than max_body_bytes ({self._max_body_bytes} bytes)",
                                 "PAYLOAD_TOO_LARGE", headers={"Connection": "close"})(scope, receive, send)
            return
        request = self._head(scope, len(body)) + body
        try:
            await self._forward(scope["method"], request, send)
        except TimeoutError:
            logger.warning("query process timed out on %s %s", scope["method"], scope["path"])
            await error_response(504, "The query process did not answer in time.",
                                 "QUERY_TIMEOUT")(scope, receive, send)
        except (OSError, UpstreamClosed, asyncio.IncompleteReadError) as exc:
            logger.warning("query process unavailable for %s %s: %r", scope["method"], scope["path"], exc)
            await error_response(503, "The query process is not available; retry later.", "QUERY_UNAVAILABLE",
                                 headers={"Retry-After": "1"})(scope, receive, send)

    async def _forward(self, method: str, request: bytes, send: Send) -> None:
        conn, reused = await self._acquire()
        try:
            head = await self._exchange(conn, request)
        except (OSError, UpstreamClosed, asyncio.IncompleteReadError):
            conn.close()
            if not reused or method not in _IDEMPOTENT:
                raise
            # A pooled connection the query process had closed (it restarted): once more, when safe.
            conn, _ = await self._connect(), False
            head = await self._exchange(conn, request)
        try:
            keep = await _relay(conn.reader, head, send, has_body=method != "HEAD")
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            # The answer had started: all that is left is to cut it short.
            logger.warning("query process answer broke off for %s: %r", method, exc)
            conn.close()
            return
        if keep and conn.is_usable and len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(conn)
        else:
            conn.close()

    async def _acquire(self) -> tuple[_Connection, bool]:
        while self._idle:
            conn = self._idle.pop()
            if conn.is_usable:
                return conn, True
            conn.close()
        return await self._connect(), False

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self._host, self._port), CONNECT_TIMEOUT_S)
        return _Connection(reader, writer)

    async def _exchange(self, conn: _Connection, request: bytes) -> bytes:
        conn.writer.write(request)
        await conn.writer.drain()
        try:
            return await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise UpstreamClosed("closed before answering") from None
            raise

    def _head(self, scope: Scope, length: int) -> bytes:
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        lines = [b"%s %s%s HTTP/1.1" % (scope["method"].encode(), path, b"?" + query if query else b""),
                 b"host: " + self._authority, b"content-length: %d" % length]
        # The request id this port gave the request goes along, so both processes log the same one.
        request_id = scope.get("state", {}).get("request_id")
        dropped = _HOP_BY_HOP | {b"x-request-id"} if request_id else _HOP_BY_HOP
        lines += [name + b": " + value for name, value in scope["headers"] if name.lower() not in dropped]
        if request_id:
            lines.append(b"x-request-id: " + request_id.encode())
        client = scope.get("client")
        if client:
            lines.append(b"x-forwarded-for: " + client[0].encode())
        return b"\r\n".join(lines) + b"\r\n\r\n"


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _relay(reader: asyncio.StreamReader, head: bytes, send: Send, has_body: bool) -> bool:
    """Stream the answer back byte for byte; True when the connection can be reused."""
    status_line, *header_lines = head[:-4].split(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    headers = [tuple(line.split(b":", 1)) for line in header_lines if b":" in line]
    names = {name.strip().lower(): value.strip() for name, value in headers}
    is_chunked = b"chunked" in names.get(b"transfer-encoding", b"").lower()
    length = None if is_chunked else names.get(b"content-length")
    # This port's middleware adds its own X-Request-ID; granian frames the answer again.
    dropped = (_HOP_BY_HOP - {b"content-length"}) | {b"x-request-id"}
    out = [(name.strip().lower(), value.strip()) for name, value in headers if name.strip().lower() not in dropped]
    await send({"type": "http.response.start", "status": status, "headers": out})
    if not has_body or status in (204, 304):
        await send({"type": "http.response.body", "body": b""})
        return b"close" not in names.get(b"connection", b"").lower()
    if is_chunked:
        await _relay_chunked(reader, send)
    elif length is not None:
        await _relay_length(reader, int(length), send)
    else:  # HTTP/1.0 style: the body ends when the connection does
        while chunk := await asyncio.wait_for(reader.read(CHUNK_BYTES), READ_TIMEOUT_S):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
    return (length is not None or is_chunked) and b"close" not in names.get(b"connection", b"").lower()


async def _relay_length(reader: asyncio.StreamReader, remaining: int, send: Send) -> None:
    while remaining > 0:
        chunk = await asyncio.wait_for(reader.read(min(remaining, CHUNK_BYTES)), READ_TIMEOUT_S)
        if not chunk:
            raise asyncio.IncompleteReadError(b"", remaining)
        remaining -= len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _relay_chunked(reader: asyncio.StreamReader, send: Send) -> None:
    while True:
        size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), READ_TIMEOUT_S)
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            with contextlib.suppress(asyncio.IncompleteReadError):
                await asyncio.wait_for(reader.readuntil(b"\r\n"), READ_TIMEOUT_S)  # the empty trailer
            return
        data = await asyncio.wait_for(reader.readexactly(size + 2), READ_TIMEOUT_S)
        await send({"type": "http.response.body", "body": data[:-2], "more_body": True})
