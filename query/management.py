"""Management: DELETE a session, PATCH its status, cleanup. Each becomes a
command in the spool, so it is ordered after every write acknowledged before
it; the handler then waits (up to ingest.flush_timeout) for the flusher to
apply it and answers with what it did."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from msgspec import Struct
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from core.auth import ScopedRoute
from core.errors import SessionNotFound
from core.http import decode_body, error_response, json_response
from query.openapi_types import Queued
from core.records import JSON_ENCODER, KIND_CLEANUP, KIND_DELETE_SESSION, KIND_SET_SESSION_STATUS, CleanupCommand, CommandFailed, CommandNotFound, CommandResult, DeleteSession, SetSessionStatus, Superseded
from persistence_api.translation import Cleanup, SessionStatus
from core.settings import Settings, SpoolSettings
from wal import Spool, SpoolError
from wal.types import Append

POLL_S = 0.02
_RESULT = msgspec.json.Decoder(CommandResult)  # tagged by "status"
MAX_BODY_BYTES = 64 * 1024


class StatusChange(Struct):
    status: SessionStatus


class CommandQueue:
    """Appends commands to the spool and waits for their results."""

    def __init__(self, settings: SpoolSettings, timeout_s: float) -> None:
        self._settings = settings
        self._timeout_s = timeout_s

    async def run(self, kind: int, command: Struct) -> CommandResult | None:
        """The command's result, or None if it is still queued after the timeout."""
        seq = await run_in_threadpool(self._append, kind, JSON_ENCODER.encode(command))
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            result = await run_in_threadpool(self._result, seq)
            if result is not None:
                return _RESULT.decode(result)
            await asyncio.sleep(POLL_S)
        return None

    def _append(self, kind: int, payload: bytes) -> int:
        spool = Spool.open(self._settings)
        try:
            (seq,) = spool.append_many([Append(kind, payload, 1)])
            if isinstance(seq, SpoolError):
                raise seq
            spool.request_flush(seq)
            return seq
        finally:
            spool.close()

    def _result(self, seq: int) -> bytes | None:
        spool = Spool.open(self._settings)
        try:
            return spool.command_result(seq)
        finally:
            spool.close()


def management_routes(settings: Settings) -> list[ScopedRoute]:
    queue = CommandQueue(settings.spool, settings.ingest.flush_timeout)

    async def delete_session(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        if len(session_id) > 36:
            raise SessionNotFound(session_id)
        result = await queue.run(KIND_DELETE_SESSION, DeleteSession(session_id))
        await _record(request, "session.delete", session_id, result)
        return answer(result, session_id, request)

    async def set_status(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        change = await decode_body(request, StatusChange, MAX_BODY_BYTES)
        if len(session_id) > 36:
            raise SessionNotFound(session_id)
        result = await queue.run(KIND_SET_SESSION_STATUS, SetSessionStatus(session_id, change.status))
        await _record(request, "session.status", session_id, result, {"status": change.status})
        return answer(result, session_id, request)

    async def cleanup(request: Request) -> Response:
        body = await decode_body(request, Cleanup, MAX_BODY_BYTES, allow_empty=True)
        command = CleanupCommand(body.completed_days, body.failed_days, body.dry_run)
        result = await queue.run(KIND_CLEANUP, command)
        await _record(request, "sessions.cleanup", None, result, msgspec.structs.asdict(command))
        return answer(result, None, request)

    base = "/api/v1/translation/sessions"
    return [
        ScopedRoute(base + "/cleanup", cleanup, methods=["POST"], access="admin"),
        ScopedRoute(base + "/{session_id}", delete_session, methods=["DELETE"], access="admin"),
        ScopedRoute(base + "/{session_id}/status", set_status, methods=["PATCH"], access="admin"),
    ]


async def _record(request: Request, action: str, session_id: str | None, result: CommandResult | None,
                  details: dict[str, Any] | None = None) -> None:
    """The audit event of a management write: what was asked and what came of it."""
    outcome = "failure" if isinstance(result, CommandNotFound | Superseded | CommandFailed) else "success"
    what = "queued" if result is None else type(result).__name__
    await request.state.audit_trail.record(request, action, "session", session_id, outcome, what, details)


def answer(result: CommandResult | None, session_id: str | None, request: Request) -> Response:
    if result is None:
        return json_response(Queued("queued", session_id, "Accepted into the spool; it is applied in order once "
                                                          "the database answers."), 202)
    if isinstance(result, CommandNotFound):
        raise SessionNotFound(result.session_id)
    if isinstance(result, Superseded):
        return error_response(
            409, f"Not applied: a write with a newer version (updated_at) reached the database first and its "
                 f"status {result.current_status!r} stays.", "SUPERSEDED", session_id=result.session_id,
            requested_status=result.new_status, current_status=result.current_status)
    if isinstance(result, CommandFailed):
        return error_response(500, "The database refused this command for good; it was moved to the dead "
                                   "letters (GET /api/v1/system/dead-letters) and can be retried there.",
                              "COMMAND_FAILED", seq=result.seq, request_id=request.state.request_id)
    return json_response(result)
