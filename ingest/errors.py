"""Errors a client can cause on the write path, mapped to API.md's JSON
error shape in one handler map."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from core.http import COMMON_HANDLERS, error_response, unavailable
from ingest.validation import BatchInvalid, BodyNotJson
from wal import SpoolError


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than max_body_bytes ({limit} bytes)")
        self.limit = limit


class BodyTimeout(Exception):
    def __init__(self, limit_s: float) -> None:
        super().__init__(f"the body did not arrive within body_timeout ({limit_s:g} s)")


class WrongContentType(Exception):
    """The request declares a content type other than JSON."""


async def _too_large(request: Request, exc: Exception) -> Response:
    # The rest of the body was not read: the connection cannot carry another request.
    return error_response(413, str(exc), "PAYLOAD_TOO_LARGE", headers={"Connection": "close"})


async def _body_timeout(request: Request, exc: Exception) -> Response:
    return error_response(408, str(exc), "REQUEST_TIMEOUT", headers={"Connection": "close"})


async def _wrong_type(request: Request, exc: Exception) -> Response:
    return error_response(400, str(exc), "UNSUPPORTED_CONTENT_TYPE")


async def _not_json(request: Request, exc: Exception) -> Response:
    return error_response(400, str(exc), "INVALID_JSON")


async def _invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BatchInvalid)
    errors = [{"field": e.field, "message": e.message} for e in exc.errors]
    return error_response(422, "The batch was not accepted: fix every field listed in errors.",
                          "VALIDATION_ERROR", errors)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    **COMMON_HANDLERS,
    BodyTooLarge: _too_large,
    BodyTimeout: _body_timeout,
    WrongContentType: _wrong_type,
    BodyNotJson: _not_json,
    BatchInvalid: _invalid,
    SpoolError: unavailable,
}
