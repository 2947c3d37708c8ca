"""Every request of API.md as a Call: built here once, executed by the
threaded client (client.py) and the asyncio one (aio.py) alike."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import msgspec

from persistence_api.audit import AuditEvent, EventPage, StoredEvent, VerifyResult
from persistence_api.files import File, FileDeleted, FileList, PresignedUpload, PresignedUrl
from persistence_api.system import Health
from persistence_api.translation import (CleanupResult, Deleted, FlushResult, IncompleteSessions, ListPage, Queued,
                                         RecoveryStatus, SessionDetail, SessionSummary, SessionTaskPage, Stats,
                                         StatusUpdated, TaskView)
from persistence_api.users import (Authenticated, NewUserSession, Revoked, RevokedCount, SessionCreate, User,
                                   UserCreate, UserDeleted, UserList, UserPatch, UserSession, UserSessionList,
                                   Validated)
from persistence_client.protocol import API, Call, call, query

Order = Literal["asc", "desc"]
SessionStatus = Literal["pending", "processing", "completed", "failed", "cancelled"]
TaskStatus = Literal["pending", "processing", "completed", "failed"]

# -- translation ------------------------------------------------------------------


def get_session(session_id: str) -> Call[SessionDetail]:
    return call("GET", f"/translation/sessions/{_seg(session_id)}", SessionDetail)


def list_sessions(cursor: str | None, *, status: SessionStatus | None = None, from_date: datetime | None = None,
                  to_date: datetime | None = None, sort_by: Literal["created_at", "updated_at"] | None = None,
                  order: Order | None = None, page_size: int = 100) -> Call[ListPage[SessionSummary]]:
    return call("GET", "/translation/sessions", ListPage[SessionSummary], params=dict(
        status=status, from_date=from_date, to_date=to_date, sort_by=sort_by, order=order, page_size=page_size,
        cursor=cursor))


def list_session_tasks(cursor: str | None, session_id: str, *, status: TaskStatus | None = None,
                       sheet_name: str | None = None, page_size: int = 100) -> Call[SessionTaskPage[TaskView]]:
    return call("GET", f"/translation/sessions/{_seg(session_id)}/tasks", SessionTaskPage[TaskView], params=dict(
        status=status, sheet_name=sheet_name, page_size=page_size, cursor=cursor))


def get_task(task_id: str) -> Call[TaskView]:
    return call("GET", f"/translation/tasks/{_seg(task_id)}", TaskView)


def list_tasks(cursor: str | None, *, session_id: str | None = None, status: TaskStatus | None = None,
               from_date: datetime | None = None, to_date: datetime | None = None,
               page_size: int = 100) -> Call[ListPage[TaskView]]:
    return call("GET", "/translation/tasks", ListPage[TaskView], params=dict(
        session_id=session_id, status=status, from_date=from_date, to_date=to_date, page_size=page_size,
        cursor=cursor))


def delete_session(session_id: str) -> Call[Deleted | Queued]:
    """200 Deleted once applied; 202 Queued when the database did not answer in time."""
    return _applied("DELETE", f"/translation/sessions/{_seg(session_id)}", Deleted, None)


def set_session_status(session_id: str, status: SessionStatus) -> Call[StatusUpdated | Queued]:
    return _applied("PATCH", f"/translation/sessions/{_seg(session_id)}/status", StatusUpdated, {"status": status})


def cleanup(completed_days: int | None = None, failed_days: int | None = None,
            dry_run: bool = False) -> Call[CleanupResult | Queued]:
    body = {k: v for k, v in dict(completed_days=completed_days, failed_days=failed_days).items() if v is not None}
    return _applied("POST", "/translation/sessions/cleanup", CleanupResult, {**body, "dry_run": dry_run})


def _applied(method: str, path: str, answer: type, body: Any) -> Call[Any]:
    base: Call[Any] = call(method, path, answer, json=body, ok=(200, 202))
    return Call(base.method, base.path, answer, base.params, base.body, base.headers, base.ok, {202: Queued})


def flush_database() -> Call[FlushResult]:
    return call("POST", "/translation/flush", FlushResult, ok=(200,))


def incomplete_sessions() -> Call[IncompleteSessions]:
    return call("GET", "/translation/recovery/incomplete-sessions", IncompleteSessions)


def recovery_status() -> Call[RecoveryStatus]:
    return call("GET", "/translation/recovery/status", RecoveryStatus)


def restore(session_id: str) -> Call[None]:
    """Streamed: read with streams.ArrayItems (client.RestoreStream)."""
    return Call("POST", f"{API}/translation/recovery/restore/{_seg(session_id)}", None, ok=frozenset({200}))


def stats() -> Call[Stats]:
    return call("GET", "/translation/stats", Stats)


def health() -> Call[Health]:
    return Call("GET", "/health", Health, ok=frozenset({200, 503}))  # 503 is an answer here: "cannot accept"


# -- files ------------------------------------------------------------------------

def upload(filename: str, content_type: str, *, session_id: str | None, owner_id: str | None,
           tags: list[str] | None, size: int | None) -> Call[File]:
    headers = {"content-type": content_type}
    if size is not None:
        headers["content-length"] = str(size)
    return Call("POST", f"{API}/files", File, query(dict(
        filename=filename, session_id=session_id, owner_id=owner_id, tags=",".join(tags) if tags else None)),
        None, headers, frozenset({201}))


def get_file(file_id: str) -> Call[File]:
    return call("GET", f"/files/{_seg(file_id)}", File)


def file_content(file_id: str, byte_range: tuple[int, int | None] | None = None) -> Call[None]:
    headers = {}
    if byte_range is not None:
        headers["range"] = f"bytes={byte_range[0]}-{'' if byte_range[1] is None else byte_range[1]}"
    return Call("GET", f"{API}/files/{_seg(file_id)}/content", None, None, None, headers, frozenset({200, 206}))


def list_files(cursor: str | None, *, session_id: str | None = None, owner_id: str | None = None,
               content_type: str | None = None, tag: str | None = None, created_from: datetime | None = None,
               created_to: datetime | None = None, limit: int = 1000) -> Call[FileList]:
    return call("GET", "/files", FileList, params=dict(
        session_id=session_id, owner_id=owner_id, content_type=content_type, tag=tag, created_from=created_from,
        created_to=created_to, limit=limit, cursor=cursor))


def presign(file_id: str, expires_in: int = 900) -> Call[PresignedUrl]:
    return call("POST", f"/files/{_seg(file_id)}/presign", PresignedUrl, json={"expires_in": expires_in})


def start_upload(filename: str, content_type: str, size: int, *, session_id: str | None = None,
                 owner_id: str | None = None, tags: list[str] | None = None,
                 expires_in: int | None = None) -> Call[PresignedUpload]:
    body = {k: v for k, v in dict(filename=filename, content_type=content_type, size=size, session_id=session_id,
                                  owner_id=owner_id, tags=tags, expires_in=expires_in).items() if v is not None}
    return call("POST", "/files/uploads", PresignedUpload, json=body, ok=(201,))


def complete_upload(file_id: str, sha256: str | None = None) -> Call[File]:
    return call("POST", f"/files/uploads/{_seg(file_id)}/complete", File,
                json={"sha256": sha256} if sha256 else {}, ok=(201,))


def delete_file(file_id: str) -> Call[FileDeleted]:
    return call("DELETE", f"/files/{_seg(file_id)}", FileDeleted)


# -- users and user sessions ----------------------------------------------------

def create_user(user: UserCreate) -> Call[User]:
    return call("POST", "/users", User, json=user, ok=(201,))


def get_user(user_id: str) -> Call[User]:
    return call("GET", f"/users/{_seg(user_id)}", User)


def update_user(user_id: str, patch: UserPatch) -> Call[User]:
    return call("PATCH", f"/users/{_seg(user_id)}", User, json=patch)


def delete_user(user_id: str) -> Call[UserDeleted]:
    return call("DELETE", f"/users/{_seg(user_id)}", UserDeleted)


def list_users(cursor: str | None, *, status: Literal["active", "disabled"] | None = None,
               role: str | None = None, q: str | None = None, limit: int = 1000) -> Call[UserList]:
    return call("GET", "/users", UserList, params=dict(status=status, role=role, q=q, limit=limit, cursor=cursor))


def authenticate(login: str, password: str) -> Call[Authenticated]:
    return call("POST", "/users/authenticate", Authenticated, json={"login": login, "password": password})


def open_user_session(request: SessionCreate) -> Call[NewUserSession]:
    return call("POST", "/user-sessions", NewUserSession, json=request, ok=(201,))


def validate_user_session(token: str) -> Call[Validated]:
    return call("POST", "/user-sessions/validate", Validated, json={"token": token})


def set_user_session_data(token: str, data: dict[str, Any]) -> Call[UserSession]:
    return call("PATCH", "/user-sessions/data", UserSession, json={"token": token, "data": data})


def revoke_user_session(token: str) -> Call[Revoked]:
    return call("POST", "/user-sessions/revoke", Revoked, json={"token": token})


def revoke_user_session_id(session_id: str) -> Call[Revoked]:
    return call("DELETE", f"/user-sessions/{_seg(session_id)}", Revoked)


def list_user_sessions(user_id: str) -> Call[UserSessionList]:
    return call("GET", f"/users/{_seg(user_id)}/sessions", UserSessionList)


def revoke_all_user_sessions(user_id: str) -> Call[RevokedCount]:
    return call("DELETE", f"/users/{_seg(user_id)}/sessions", RevokedCount)


# -- audit log ----------------------------------------------------------------------

def complete_event(event: AuditEvent | dict[str, Any]) -> AuditEvent | dict[str, Any]:
    """Give an event its id and time at put(), as the service would: a batch
    sent again after a lost answer then stores each event once."""
    now = datetime.now(UTC)
    if isinstance(event, AuditEvent):
        if event.event_id is not None and event.occurred_at is not None:
            return event
        return msgspec.structs.replace(event, event_id=event.event_id or str(uuid.uuid4()),
                                       occurred_at=event.occurred_at or now)
    return {**event, "event_id": event.get("event_id") or str(uuid.uuid4()),
            "occurred_at": event.get("occurred_at") or now}


def event_filters(actor_id: str | None = None, action: str | None = None, resource_type: str | None = None,
                  resource_id: str | None = None, outcome: Literal["success", "failure"] | None = None,
                  since: datetime | None = None, until: datetime | None = None,
                  q: str | None = None) -> dict[str, Any]:
    """API.md's filters; `since` and `until` are its `from` (inclusive) and `to` (exclusive)."""
    return {"actor_id": actor_id, "action": action, "resource_type": resource_type, "resource_id": resource_id,
            "outcome": outcome, "from": since, "to": until, "q": q}


def list_events(cursor: str | None, filters: dict[str, Any], limit: int = 1000) -> Call[EventPage]:
    return call("GET", "/audit/events", EventPage, params={**filters, "limit": limit, "cursor": cursor})


def get_event(event_id: str) -> Call[StoredEvent]:
    return call("GET", f"/audit/events/{_seg(event_id)}", StoredEvent)


def export_events(filters: dict[str, Any], format: Literal["ndjson", "csv"] = "ndjson") -> Call[None]:
    return Call("GET", f"{API}/audit/export", None, query({**filters, "format": format}), ok=frozenset({200}))


def verify_events(since: datetime | None = None, until: datetime | None = None) -> Call[VerifyResult]:
    return call("GET", "/audit/verify", VerifyResult, params={"from": since, "to": until})


def _seg(value: str) -> str:
    """One path segment, percent-encoded (ids may hold any character)."""
    return quote(value, safe="")
