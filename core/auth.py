"""Optional API keys with scopes, and per-key rate limits.

Keys are compared by their SHA-256 (config stores only hashes); a key never
reaches a log line: failures are logged with the key's name when known, or
nothing. The rate limit is a token bucket per key in each process, so with N
ingest workers a key may reach N x rate_per_s in total.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from core.http import error_response
from core.settings import ApiKey, AuthSettings

logger = logging.getLogger(__name__)

Access = Literal["open", "read", "write", "admin"]  # "open": no key needed


class ScopedRoute(Route):
    """A route that declares, where it is defined, the API-key scope it needs."""

    def __init__(self, path: str, endpoint: Callable[..., Any], *, methods: list[str], access: Access) -> None:
        super().__init__(path, endpoint, methods=methods)
        self.access = access


def route_access(routes: Sequence[BaseRoute], scope: Scope) -> Access:
    """The access declared by the route that will answer this request; "read"
    when none will (an unknown path or method is answered 404/405 only to a key
    that may read)."""
    for route in routes:
        if isinstance(route, ScopedRoute) and route.matches(scope)[0] is Match.FULL:
            return route.access
    return "read"


class _Bucket:
    def __init__(self, rate_per_s: float) -> None:
        self.rate = rate_per_s
        # A burst of one second's requests, and never less than one request:
        # a key allowed 0.5/s must be able to make its one request every 2 s.
        self.capacity = max(1.0, rate_per_s)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> float:
        """0 when a request may pass, else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class ApiKeyAuth:
    def __init__(self, app: ASGIApp, settings: AuthSettings, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes
        self.keys = {key.sha256: key for key in settings.keys}
        self.buckets = {key.sha256: _Bucket(key.rate_per_s) for key in settings.keys if key.rate_per_s}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys:
            await self.app(scope, receive, send)
            return
        needed = route_access(self.routes, scope)
        if needed == "open":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope, needed)
        if refusal is not None:
            trail = (scope.get("state") or {}).get("audit_trail")
            if trail is not None and refusal.status_code in (401, 403):  # a missing or wrong key (audit log)
                trail.refused(scope, refusal.status_code, "no valid API key" if refusal.status_code == 401
                              else f"the API key lacks the {needed!r} scope")
            # The body was not read: the connection cannot carry another request.
            refusal.headers["connection"] = "close"
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, needed: str):  # -> Response | None
        key = self._key(scope)
        if key is None:
            return error_response(401, "A valid API key is required (X-API-Key or Authorization: Bearer).",
                                  "UNAUTHORIZED", headers={"WWW-Authenticate": "Bearer"})
        scope.setdefault("state", {})["api_key"] = key.name  # the actor of the audit events this request causes
        if needed not in key.scopes:
            logger.info("key %r lacks scope %s for %s %s", key.name, needed, scope["method"], scope["path"])
            return error_response(403, f"This API key lacks the {needed!r} scope.", "FORBIDDEN")
        bucket = self.buckets.get(key.sha256)
        wait_s = bucket.take() if bucket else 0.0
        if wait_s:
            return error_response(429, f"Rate limit of {key.rate_per_s:g} requests/s reached for this key.",
                                  "RATE_LIMITED", headers={"Retry-After": str(max(1, math.ceil(wait_s)))})
        return None

    def _key(self, scope: Scope) -> ApiKey | None:
        presented = _presented_key(scope)
        if presented is None:
            return None
        digest = hashlib.sha256(presented).hexdigest()
        for sha, key in self.keys.items():
            if hmac.compare_digest(sha, digest):
                return key
        return None


def _presented_key(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name == b"x-api-key":
            return value
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
    return None
