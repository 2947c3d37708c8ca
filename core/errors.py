"""Errors a client can cause, typed: a handler raises one and the app's one
error map (core.http.client_error) answers it in API.md's error shape. Each
carries its status, error_code, and the fields it names."""

from __future__ import annotations

from typing import Any

from msgspec import Struct


class FieldError(Struct):
    field: str
    message: str


class ClientError(Exception):
    status = 400
    error_code = "BAD_REQUEST"
    closes_connection = False  # the body was not read to its end: the connection cannot carry another request
    headers: dict[str, str] = {}  # sent with the answer (Retry-After of a 429)

    def __init__(self, detail: str, errors: list[FieldError] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.extra = extra


class WrongContentType(ClientError):
    error_code = "UNSUPPORTED_CONTENT_TYPE"


class BodyNotJson(ClientError):
    error_code = "INVALID_JSON"


class BodyTooLarge(ClientError):
    status = 413
    error_code = "PAYLOAD_TOO_LARGE"
    closes_connection = True

    def __init__(self, limit: int, what: str = "max_body_bytes") -> None:
        super().__init__(f"the body is larger than {what} ({limit} bytes)")


class BodyTimeout(ClientError):
    status = 408
    error_code = "REQUEST_TIMEOUT"
    closes_connection = True

    def __init__(self, limit_s: float) -> None:
        super().__init__(f"the body did not arrive within body_timeout ({limit_s:g} s)")


class Invalid(ClientError):
    """JSON that breaks the rules: every bad field is named."""
    status = 422
    error_code = "VALIDATION_ERROR"

    def __init__(self, errors: list[FieldError], detail: str = "The request was not accepted: fix every field "
                                                               "listed in errors.") -> None:
        super().__init__(detail, errors)


class NotFound(ClientError):
    status = 404
    error_code = "NOT_FOUND"


class SessionNotFound(NotFound):
    error_code = "SESSION_NOT_FOUND"

    def __init__(self, session_id: str) -> None:
        super().__init__("Session not found", session_id=session_id)


class TaskNotFound(NotFound):
    error_code = "TASK_NOT_FOUND"

    def __init__(self, task_id: str) -> None:
        super().__init__("Task not found", task_id=task_id)


class Conflict(ClientError):
    status = 409
    error_code = "CONFLICT"


class TooManyRequests(ClientError):
    status = 429
    error_code = "TOO_MANY_REQUESTS"

    def __init__(self, detail: str, retry_after_s: float) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(max(1, int(retry_after_s + 0.999)))}
