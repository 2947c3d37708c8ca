"""The users and user-sessions API of API.md (Phase 3), served by the query
process. Scopes: user management is admin, reads are read, logging in and
using a login session is write (a backend acting for its users)."""

from __future__ import annotations

from msgspec import UNSET
from starlette.requests import Request
from starlette.responses import Response

from core.auth import ScopedRoute
from core.errors import ClientError
from core.http import decode_body, error_response, json_response
from persistence_api.users import (
    ROLES,
    USER_STATUSES,
    Authenticated,
    Credentials,
    RevokedCount,
    Revoked,
    SessionCreate,
    SessionData,
    TokenBody,
    UserCreate,
    UserDeleted,
    UserList,
    UserPatch,
    UserSessionList,
    Validated,
)
from plugins.user_directory import UserFilter
from query.params import ParamReader
from users.service import SessionStoreUnavailable, UserService, user_view
from wal.audit_trail import AuditTrail

USERS = "/api/v1/users"
USER_SESSIONS = "/api/v1/user-sessions"
SMALL_BODY = 64 * 1024
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


def _users(request: Request) -> UserService:
    return request.state.users


def _trail(request: Request) -> AuditTrail:
    return request.state.audit_trail


async def store_unavailable(request: Request, exc: Exception) -> Response:
    return error_response(503, "The session store cannot be used now; retry later.", "SESSION_STORE_UNAVAILABLE",
                          headers={"Retry-After": "2"})


# -- users -----------------------------------------------------------------------


async def create_user(request: Request) -> Response:
    body = await decode_body(request, UserCreate, SMALL_BODY)
    user = await _users(request).create(body)
    await _trail(request).record(request, "user.create", "user", user.user_id, details={"role": user.role})
    return json_response(user, 201, {"Location": f"{USERS}/{user.user_id}"})


async def get_user(request: Request) -> Response:
    return json_response(user_view(await _users(request).get_row(request.path_params["user_id"])))


async def patch_user(request: Request) -> Response:
    body = await decode_body(request, UserPatch, SMALL_BODY)
    user = await _users(request).patch(request.path_params["user_id"], body)
    changed = sorted(name for name in body.__struct_fields__ if getattr(body, name) is not UNSET)
    await _trail(request).record(request, "user.update", "user", user.user_id, details={"fields": changed})
    return json_response(user)


async def delete_user(request: Request) -> Response:
    user_id = request.path_params["user_id"]
    await _users(request).delete(user_id)
    await _trail(request).record(request, "user.delete", "user", user_id)
    return json_response(UserDeleted(user_id=user_id))


async def list_users(request: Request) -> Response:
    r = ParamReader(request.query_params)
    prefix = r.text("q", 254)
    flt = UserFilter(status=r.choice("status", USER_STATUSES), role=r.choice("role", ROLES),
                     prefix=prefix.casefold() if prefix else None)
    limit = r.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    after = r.keyset_cursor("users", flt, 2)
    r.done()
    rows = await _users(request).list_users(flt, after, limit + 1)  # one more: is there a next page?
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = r.issue_cursor("users", flt, [rows[-1].created_at, rows[-1].user_id]) if more else None
    return json_response(UserList(items=[user_view(row) for row in rows], next_cursor=next_cursor))


async def authenticate(request: Request) -> Response:
    body = await decode_body(request, Credentials, SMALL_BODY)
    try:
        user = await _users(request).authenticate(body.login, body.password)
    except ClientError as exc:  # the login tried, never the password
        await _trail(request).record(request, "user.authenticate", "user", body.login[:255], "failure",
                                     exc.error_code)
        raise
    await _trail(request).record(request, "user.authenticate", "user", user.user_id)
    return json_response(Authenticated(user))


# -- login sessions ----------------------------------------------------------------


async def open_session(request: Request) -> Response:
    body = await decode_body(request, SessionCreate, SMALL_BODY)
    opened = await _users(request).open_session(body)
    await _trail(request).record(request, "user_session.create", "user_session", opened.session_id,
                                 details={"user_id": opened.user_id})
    return json_response(opened, 201, {"Cache-Control": "no-store"})


async def validate_session(request: Request) -> Response:
    body = await decode_body(request, TokenBody, SMALL_BODY)
    session, user = await _users(request).validate(body.token)
    return json_response(Validated(session, user))


async def set_session_data(request: Request) -> Response:
    body = await decode_body(request, SessionData, SMALL_BODY)
    return json_response(await _users(request).set_data(body.token, body.data))


async def revoke_session(request: Request) -> Response:
    body = await decode_body(request, TokenBody, SMALL_BODY)
    await _users(request).revoke(body.token)
    await _trail(request).record(request, "user_session.revoke", "user_session", None, message="revoked by its token")
    return json_response(Revoked())


async def revoke_session_id(request: Request) -> Response:
    session_id = request.path_params["session_id"]
    await _users(request).revoke_id(session_id)
    await _trail(request).record(request, "user_session.revoke", "user_session", session_id)
    return json_response(Revoked(session_id=session_id))


async def list_user_sessions(request: Request) -> Response:
    return json_response(UserSessionList(await _users(request).user_sessions(request.path_params["user_id"])))


async def revoke_user_sessions(request: Request) -> Response:
    user_id = request.path_params["user_id"]
    revoked = await _users(request).revoke_user(user_id)
    await _trail(request).record(request, "user_session.revoke_all", "user", user_id, details={"revoked": revoked})
    return json_response(RevokedCount(revoked))


EXCEPTION_HANDLERS = {SessionStoreUnavailable: store_unavailable}

ROUTES = [
    ScopedRoute(USERS, create_user, methods=["POST"], access="admin"),
    ScopedRoute(USERS, list_users, methods=["GET"], access="read"),
    ScopedRoute(f"{USERS}/authenticate", authenticate, methods=["POST"], access="write"),
    ScopedRoute(f"{USERS}/{{user_id}}", get_user, methods=["GET"], access="read"),
    ScopedRoute(f"{USERS}/{{user_id}}", patch_user, methods=["PATCH"], access="admin"),
    ScopedRoute(f"{USERS}/{{user_id}}", delete_user, methods=["DELETE"], access="admin"),
    ScopedRoute(f"{USERS}/{{user_id}}/sessions", list_user_sessions, methods=["GET"], access="read"),
    ScopedRoute(f"{USERS}/{{user_id}}/sessions", revoke_user_sessions, methods=["DELETE"], access="admin"),
    ScopedRoute(USER_SESSIONS, open_session, methods=["POST"], access="write"),
    ScopedRoute(f"{USER_SESSIONS}/validate", validate_session, methods=["POST"], access="write"),
    ScopedRoute(f"{USER_SESSIONS}/data", set_session_data, methods=["PATCH"], access="write"),
    ScopedRoute(f"{USER_SESSIONS}/revoke", revoke_session, methods=["POST"], access="write"),
    ScopedRoute(f"{USER_SESSIONS}/{{session_id}}", revoke_session_id, methods=["DELETE"], access="admin"),
]
