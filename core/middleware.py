"""ASGI middleware shared by both apps: a request id on every answer
(X-Request-ID, kept from the client when it sends one), request metrics by
route template, and an optional access log (never with record contents)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.metrics import HTTP_DURATION, HTTP_REQUESTS

access_log = logging.getLogger("access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContext:
    def __init__(self, app: ASGIApp, role: str, is_access_log: bool = False) -> None:
        self.app = app
        self.role = role
        self.is_access_log = is_access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._observe(scope, status, time.perf_counter() - started, request_id)

    def _observe(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        route = _route_template(scope)
        HTTP_REQUESTS.labels(self.role, route, scope["method"], str(status)).inc()
        HTTP_DURATION.labels(self.role, route, scope["method"]).observe(seconds)
        if self.is_access_log:
            access_log.info("%s %s %d %.1fms request_id=%s", scope["method"], scope["path"], status,
                            seconds * 1000, request_id)


def request_id_of(scope: Scope) -> str:
    """The client's X-Request-ID when it is safe to log and echo, else a new one."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SAFE_ID.match(text):
                return text
    return uuid.uuid4().hex


def _route_template(scope: Scope) -> str:
    # The template ("/api/v1/translation/sessions/{session_id}"), never the raw
    # path: ids in labels would make the metric's cardinality unbounded.
    route = scope.get("route")  # set by Starlette's router when a route matched
    if route is not None:
        return getattr(route, "path", "other")
    app: Any = scope.get("app")
    for route in getattr(app, "routes", []):
        match, _ = route.matches(scope)
        if match != Match.NONE:  # PARTIAL: the path exists, the method does not (405)
            return getattr(route, "path", "other")
    return "unmatched"
