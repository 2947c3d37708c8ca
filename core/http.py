"""HTTP pieces both apps share: the JSON error shape of API.md and the
handlers for errors that are not any one route's."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Any, TypeVar

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from core.errors import BodyNotJson, BodyTimeout, BodyTooLarge, ClientError, FieldError, Invalid, WrongContentType

T = TypeVar("T")

logger = logging.getLogger(__name__)
_ENCODER = msgspec.json.Encoder()

_CODES = {400: "BAD_REQUEST", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}


_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$")


def field_error(exc: msgspec.ValidationError) -> dict[str, str]:
    """msgspec's error as API.md's {"field", "message"}: the field a missing
    one would have, else the path msgspec names ("" for the body itself)."""
    match = _AT.match(str(exc))
    assert match is not None  # the pattern matches any text
    message, path = match["message"], match["path"] or ""
    missing = _MISSING.match(message)
    if missing:
        path = f"{path}.{missing['name']}" if path else missing["name"]
        message = "required field is missing"
    unknown = _UNKNOWN.match(message)
    if unknown:
        path = f"{path}.{unknown['name']}" if path else unknown["name"]
        message = "unknown field: not accepted here"
    return {"field": path, "message": message}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_ENCODER.encode(body), status_code=status, headers=headers,
                    media_type="application/json")


def error_response(status: int, detail: str, error_code: str, errors: list | None = None,
                   headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body = {"detail": detail, "error_code": error_code, "errors": errors or [], **extra}
    return json_response(body, status, headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.status_code != 404 else f"No route for {request.url.path}"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return error_response(exc.status_code, detail, _CODES.get(exc.status_code, "HTTP_ERROR"), headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method of the resource: Starlette names only those of the first
    route that matched the path, and one resource may span several routes
    (GET and DELETE /sessions/{id}). A static path (/sessions/cleanup) is the
    resource over a template that also matches it."""
    matching: dict[str, set[str]] = {}
    for route in getattr(request.scope.get("app"), "routes", []):
        match, _ = route.matches(request.scope)
        if match != Match.NONE and getattr(route, "methods", None):
            matching.setdefault(route.path, set()).update(route.methods)
    if not matching:
        return ""
    template = min(matching, key=lambda path: ("{" in path, -len(path)))
    return ", ".join(sorted(matching[template]))


async def internal_error(request: Request, exc: Exception) -> Response:
    # core.middleware.RequestContext gives every request an id and returns it in X-Request-ID.
    request_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex
    logger.error("unhandled error on %s %s (request_id=%s)", request.method, request.url.path,
                 request_id, exc_info=exc)
    return error_response(500, "Internal error; it has been logged with this request id.",
                          "INTERNAL_ERROR", request_id=request_id)


async def unavailable(request: Request, exc: Exception) -> Response:
    """For errors that carry status, error_code and retry_after (the spool's):
    503 (or 429 when the backlog is too long) + Retry-After."""
    retry_after = getattr(exc, "retry_after", 1)
    return error_response(getattr(exc, "status", 503), f"Not accepted: {exc}. Retry later.",
                          getattr(exc, "error_code", "UNAVAILABLE"), headers={"Retry-After": str(retry_after)})


async def client_error(request: Request, exc: Exception) -> Response:
    """Every error a client can cause (core.errors), in API.md's shape."""
    assert isinstance(exc, ClientError)
    headers = dict(exc.headers, Connection="close") if exc.closes_connection else exc.headers
    return error_response(exc.status, exc.detail, exc.error_code, [{"field": e.field, "message": e.message}
                                                                   for e in exc.errors], headers, **exc.extra)


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The whole JSON body, refused (413) as soon as it passes limit bytes,
    before it is read in full; 408 when it takes longer than timeout_s."""
    content_type = request.headers.get("content-type", "application/json")
    if "json" not in content_type.lower():
        raise WrongContentType(f"Content-Type must be application/json, got {content_type!r}")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    try:
        async with asyncio.timeout(timeout_s):
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(timeout_s or 0) from None
    return b"".join(chunks)


async def decode_body(request: Request, kind: type[T], limit: int, allow_empty: bool = False) -> T:
    """A small JSON body (management, system) decoded as kind; typed errors otherwise."""
    body = await read_body(request, limit)
    if allow_empty and not body:
        return kind()
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise Invalid([FieldError(**field_error(exc))]) from None
    except msgspec.DecodeError as exc:
        raise BodyNotJson(f"the body is not valid JSON: {exc}") from None


COMMON_HANDLERS: dict[Any, Any] = {HTTPException: http_error, ClientError: client_error, Exception: internal_error}
