"""What the client raises. An answer that is not a success becomes an ApiError
(or the subclass for its status) carrying the service's `error_code`,
`errors` and the request id, so a log line can be matched to the service's."""

from __future__ import annotations

from typing import Any

import msgspec

from persistence_api.translation import FieldProblem


class PersistenceError(Exception):
    """Every error this client raises."""


class TransportError(PersistenceError):
    """The service could not be reached, or the connection broke mid-answer."""


class ApiError(PersistenceError):
    """The service answered with an error status (API.md "Errors")."""

    def __init__(self, status: int, detail: str, error_code: str, errors: list[FieldProblem],
                 request_id: str | None, body: dict[str, Any], retry_after: float | None) -> None:
        super().__init__(f"{status} {error_code}: {detail}" + (f" (request {request_id})" if request_id else ""))
        self.status = status
        self.detail = detail
        self.error_code = error_code
        self.errors = errors
        self.request_id = request_id
        self.body = body  # the whole answer: some carry more keys (session_id, user_id, ...)
        self.retry_after = retry_after


class BadRequest(ApiError):
    """400: the body is not JSON or has the wrong content type."""


class Unauthorized(ApiError):
    """401: no or a wrong API key, wrong credentials, an invalid user session."""


class Forbidden(ApiError):
    """403: the API key lacks the scope, or a presigned URL expired."""


class NotFound(ApiError):
    """404: unknown id (error_code says which: SESSION_NOT_FOUND, FILE_NOT_FOUND, ...)."""


class Conflict(ApiError):
    """409: a username or email already taken."""


class PayloadTooLarge(ApiError):
    """413: the body exceeds the service's max_body_bytes (or files.max_bytes)."""


class ValidationFailed(ApiError):
    """422: the request breaks API.md's rules; `errors` names every bad field."""


class RateLimited(ApiError):
    """429: the spool's backlog is too long, or too many failed logins; see retry_after."""


class ServerError(ApiError):
    """5xx: 503 when the service cannot accept now, 500 a bug (with a request id)."""


class QueueFull(PersistenceError):
    """The writer holds max_queue records not yet acknowledged: the record was not taken."""


class WriterClosed(PersistenceError):
    """put() after close(): the record was not taken."""


class FlushTimeout(PersistenceError, TimeoutError):
    """flush() gave up waiting; the records stay queued and are still sent."""


_BY_STATUS: dict[int, type[ApiError]] = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                         409: Conflict, 413: PayloadTooLarge, 422: ValidationFailed,
                                         429: RateLimited}


class _ErrorBody(msgspec.Struct):
    detail: str = ""
    error_code: str = ""
    errors: list[FieldProblem] = []
    request_id: str | None = None


def api_error(status: int, content: bytes, headers: Any) -> ApiError:
    """The exception for an error answer; a body that is not the JSON of API.md
    (a proxy's HTML page, say) still gives a readable error."""
    body: dict[str, Any] = {}
    try:
        parsed = msgspec.json.decode(content)
        if isinstance(parsed, dict):
            body = parsed
        shape = msgspec.convert(body, _ErrorBody)
    except (msgspec.DecodeError, msgspec.ValidationError):
        shape = _ErrorBody(detail=content[:200].decode("utf-8", "replace").strip() or f"HTTP {status}",
                           error_code=f"HTTP_{status}")
    request_id = shape.request_id or headers.get("x-request-id")
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    return kind(status, shape.detail, shape.error_code, shape.errors, request_id, body,
                retry_after_seconds(headers.get("retry-after")))


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds (the service sends delta-seconds; an HTTP date is ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
