"""Port 8001 answers every path of API.md: a request the ingest app has no
route for is passed on to the query process (query.host:query.port) and its
answer streamed back unchanged, so a client needs one base URL.

Used as the ingest router's default app, it sees exactly the requests that
match no write route; a write path with the wrong method still gets the
ingest app's own 405. The httpx client (one connection pool per worker
process) is made on first use, after granian has forked the worker."""

from __future__ import annotations

import logging

import httpx
from starlette.types import Receive, Scope, Send

from core.http import error_response
from core.settings import QuerySettings

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2.0
# Between two chunks of the answer: a restore of 200k tasks streams steadily,
# but a stats query on a large table may take a while before its first byte.
READ_TIMEOUT_S = 300.0
MAX_CONNECTIONS = 64
# Connection-level headers belong to one hop; the client sets host and length.
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
                         b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length"})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyTooLarge(Exception):
    """The request body is larger than max_body_bytes."""


class ClientGone(Exception):
    """The client disconnected before its body was read: nothing to forward."""


class QueryProxy:
    """ASGI app that forwards method, path, query string, headers and body."""

    def __init__(self, query: QuerySettings, max_body_bytes: int) -> None:
        host = "127.0.0.1" if query.host in ("", "0.0.0.0", "::") else query.host  # bound to all: use loopback
        self._base_url = f"http://[{host}]:{query.port}" if ":" in host else f"http://{host}:{query.port}"
        self._max_body_bytes = max_body_bytes
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self._base_url, trust_env=False,  # never via an HTTP_PROXY of the environment
                timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=16))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan and websockets stop at the ingest app
        try:
            body = await _read_body(receive, self._max_body_bytes)
        except ClientGone:
            return
        except BodyTooLarge:
            response = error_response(413, f"the body is larger than max_body_bytes ({self._max_body_bytes} bytes)",
                                      "PAYLOAD_TOO_LARGE")
            await response(scope, receive, send)
            return
        request = self._http().build_request(scope["method"], _target(scope), headers=_headers(scope),
                                             content=body)
        try:
            upstream = await self._send(request)
        except httpx.TimeoutException as exc:
            logger.warning("query process timed out on %s %s: %r", scope["method"], scope["path"], exc)
            response = error_response(504, "The query process did not answer in time.", "QUERY_TIMEOUT")
        except httpx.TransportError as exc:
            logger.warning("query process unavailable for %s %s: %r", scope["method"], scope["path"], exc)
            response = error_response(503, "The query process is not available; retry later.",
                                      "QUERY_UNAVAILABLE", headers={"Retry-After": "1"})
        else:
            await _relay(upstream, send)
            return
        await response(scope, receive, send)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._http().send(request, stream=True)
        except httpx.TimeoutException:
            raise
        except httpx.TransportError:
            if request.method not in _IDEMPOTENT:
                raise
        # A pooled connection the query process had closed (it restarted): once more, when safe.
        return await self._http().send(request, stream=True)


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


def _target(scope: Scope) -> httpx.URL:
    raw_path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    return httpx.URL(raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else ""))


def _headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    # The request id this port gave the request goes along, so both processes log the same one.
    request_id = scope.get("state", {}).get("request_id")
    dropped = _HOP_BY_HOP | {b"x-request-id"} if request_id else _HOP_BY_HOP
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in dropped]
    if request_id:
        headers.append((b"x-request-id", request_id.encode()))
    client = scope.get("client")
    if client:
        headers.append((b"x-forwarded-for", client[0].encode()))
    return headers


async def _relay(upstream: httpx.Response, send: Send) -> None:
    """Stream the query process's answer back byte for byte (no decoding)."""
    try:
        dropped = (_HOP_BY_HOP - {b"content-length"}) | {b"x-request-id"}  # this port's middleware adds it
        headers = [(k, v) for k, v in upstream.headers.raw if k.lower() not in dropped]
        await send({"type": "http.response.start", "status": upstream.status_code, "headers": headers})
        async for chunk in upstream.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        await upstream.aclose()
