"""System routes of the query process (port 8001 gets them through its proxy):
the effective configuration with secrets redacted, the dead letters (list,
retry, purge), the OpenAPI document and the human page that renders it.

Dead-letter operations open their own Spool in a worker thread, as
query/management.py does: a retry takes the spool's write lock and must not
hold up the event loop or share the connection /health reads with."""

from __future__ import annotations

import re

from collections.abc import Callable
from importlib import resources
from typing import TypeVar

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from core.auth import ScopedRoute
from core.errors import BodyNotJson, FieldError, Invalid
from core.http import field_error, json_response, read_body
from core.kinds import KINDS
from core.records import JSON_ENCODER, KIND_ARCHIVE, KIND_ARCHIVE_RESTORE, KIND_AUDIT_RETENTION, KIND_CLEANUP, KIND_DELETE_SESSION, KIND_SET_SESSION_STATUS
from core.redact import redact
from core.settings import Settings, SpoolSettings
from core.times import iso_z
from query.openapi import openapi_document
from query.openapi_types import (
    DeadLetterPage,
    DeadLetterSelection,
    DeadLetterView,
    PurgeResult,
    RetryResult,
    SkippedLetter,
)
from query.params import InvalidParams
from wal import Spool, dead_letters
from wal.types import DeadLetter

T = TypeVar("T")
SYSTEM = "/api/v1/system"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_BODY_BYTES = 1024 * 1024  # a selection of ids; 100k ids fit
_KIND_NAMES = {**{kind.entry_kind: kind.name for kind in KINDS}, KIND_DELETE_SESSION: "delete_session",
               KIND_SET_SESSION_STATUS: "set_session_status", KIND_CLEANUP: "cleanup",
               KIND_AUDIT_RETENTION: "audit_retention", KIND_ARCHIVE: "archive", KIND_ARCHIVE_RESTORE: "archive_restore"}
_SELECTION = msgspec.json.Decoder(DeadLetterSelection)
_CHOOSE = 'send either {"ids": [...]} with at least one id, or {"all": true}'


def config_body(settings: Settings) -> dict:
    """The effective configuration, every section, secrets replaced by '***'."""
    return redact(msgspec.to_builtins(settings))


def letter_view(dead: DeadLetter) -> DeadLetterView:
    return DeadLetterView(
        id=dead.id, kind=_KIND_NAMES.get(dead.kind, f"unknown:{dead.kind}"), record_key=dead.record_key,
        seq=dead.seq, received_at=iso_z(dead.received_at_us), failed_at=iso_z(dead.failed_at_us),
        error=dead.error, payload=_json_or_text(dead.payload))


def _json_or_text(payload: bytes) -> msgspec.Raw:
    try:
        msgspec.json.decode(payload)
        return msgspec.Raw(payload)
    except msgspec.DecodeError:  # an entry dead-lettered because it was not JSON: show its text
        return msgspec.Raw(JSON_ENCODER.encode(payload.decode("utf-8", "replace")))


def list_page(spool: Spool, limit: int, after_id: int) -> DeadLetterPage:
    letters = dead_letters.page(spool, limit + 1, after_id)
    shown = letters[:limit]
    next_after = shown[-1].id if len(letters) > limit else None
    return DeadLetterPage(dead_letters.count(spool), [letter_view(d) for d in shown], next_after)


def retry_result(report: dead_letters.RetryReport) -> RetryResult:
    return RetryResult("retried", len(report.retried), report.retried,
                       [SkippedLetter(s.id, s.reason) for s in report.skipped], report.not_found)


def _with_spool(settings: SpoolSettings, work: Callable[[Spool], T]) -> T:
    spool = Spool.open(settings)
    try:
        return work(spool)
    finally:
        spool.close()


def _paging(params: QueryParams) -> tuple[int, int]:
    errors: list[FieldError] = []
    limit = _integer(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT, errors)
    after_id = _integer(params, "after_id", 0, 0, 2**63 - 1, errors)
    if errors:
        raise InvalidParams(errors)
    return limit, after_id


def _integer(params: QueryParams, name: str, default: int, low: int, high: int, errors: list[FieldError]) -> int:
    if len(params.getlist(name)) > 1:
        errors.append(FieldError(name, "must be given at most once"))
        return default
    text = params.get(name) or ""
    if not text:
        return default
    if not re.fullmatch(r"[0-9]{1,20}", text) or not low <= int(text) <= high:
        errors.append(FieldError(name, f"must be an integer from {low} to {high}"))
        return default
    return int(text)


async def _selection(request: Request) -> DeadLetterSelection:
    body = await read_body(request, MAX_BODY_BYTES)
    if not body.strip():
        raise Invalid([FieldError("body", _CHOOSE)])
    try:
        selection = _SELECTION.decode(body)
    except msgspec.ValidationError as exc:
        raise Invalid([FieldError("body", field_error(exc)["message"])]) from None
    except msgspec.DecodeError as exc:
        raise BodyNotJson(f"the body is not valid JSON: {exc}") from None
    if selection.is_all == bool(selection.ids):
        raise Invalid([FieldError("body", _CHOOSE)])
    return selection


def system_routes(settings: Settings) -> list[ScopedRoute]:
    config = JSON_ENCODER.encode(config_body(settings))
    document = JSON_ENCODER.encode(openapi_document())
    docs_page = resources.files("query").joinpath("docs.html").read_bytes()

    async def get_config(request: Request) -> Response:
        return Response(config, media_type="application/json")

    async def list_letters(request: Request) -> Response:
        limit, after_id = _paging(request.query_params)
        page = await run_in_threadpool(_with_spool, settings.spool, lambda s: list_page(s, limit, after_id))
        return json_response(page)

    async def retry(request: Request) -> Response:
        selection = await _selection(request)
        ids = None if selection.is_all else selection.ids
        report = await run_in_threadpool(_with_spool, settings.spool, lambda s: dead_letters.retry(s, ids))
        answer = retry_result(report)
        await request.state.audit_trail.record(request, "dead_letters.retry", "dead_letter",
                                               "all" if ids is None else None,
                                               details={"retried_ids": answer.retried_ids[:1000]})
        return json_response(answer)

    async def purge(request: Request) -> Response:
        selection = await _selection(request)
        ids = None if selection.is_all else selection.ids
        purged = await run_in_threadpool(_with_spool, settings.spool, lambda s: dead_letters.purge(s, ids))
        await request.state.audit_trail.record(request, "dead_letters.purge", "dead_letter",
                                               "all" if ids is None else None,
                                               details={"purged": purged, "ids": (ids or [])[:1000]})
        return json_response(PurgeResult("purged", purged))

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    async def docs(request: Request) -> Response:
        return HTMLResponse(docs_page)

    return [
        ScopedRoute(f"{SYSTEM}/config", get_config, methods=["GET"], access="admin"),
        ScopedRoute(f"{SYSTEM}/dead-letters", list_letters, methods=["GET"], access="admin"),
        ScopedRoute(f"{SYSTEM}/dead-letters", purge, methods=["DELETE"], access="admin"),
        ScopedRoute(f"{SYSTEM}/dead-letters/retry", retry, methods=["POST"], access="admin"),
        ScopedRoute(f"{SYSTEM}/dead-letters/purge", purge, methods=["POST"], access="admin"),
        ScopedRoute("/openapi.json", openapi, methods=["GET"], access="open"),
        ScopedRoute("/docs", docs, methods=["GET"], access="open"),
    ]
