"""Users and login sessions (Phase 3): the wire types of API.md "Users and
user sessions", defined once and used to validate, to encode answers and to
generate /openapi.json.

Users are written synchronously by the query process (plugins/user_directory.py):
uniqueness and read-your-writes matter more than throughput here. Login
sessions live in the session store (plugins/sessions/).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from persistence_api.translation import IsoTime

ROLES = ("admin", "translator", "reviewer", "viewer")
USER_STATUSES = ("active", "disabled")
Role = Literal["admin", "translator", "reviewer", "viewer"]
UserStatus = Literal["active", "disabled"]

USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# One '@', something on both sides, a dot in the domain, no spaces or control characters.
# No \s: JSON Schema's (ECMA) and Python's \s differ (U+0085), and the document must mean what the service checks.
EMAIL_PATTERN = r"^[^@ \x00-\x1f\x7f-\x9f]+@[^@ \x00-\x1f\x7f-\x9f.]+(\.[^@ \x00-\x1f\x7f-\x9f.]+)+$"
Username = Annotated[str, Meta(min_length=3, max_length=64, pattern=USERNAME_PATTERN)]
Email = Annotated[str, Meta(min_length=6, max_length=254, pattern=EMAIL_PATTERN)]
DisplayName = Annotated[str, Meta(max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")]
Password = Annotated[str, Meta(min_length=8, max_length=256)]
MAX_METADATA_BYTES = 16 * 1024
MAX_SESSION_DATA_BYTES = 16 * 1024
MAX_TTL_S = 90 * 86_400
TtlSeconds = Annotated[int, Meta(ge=60, le=MAX_TTL_S)]
IdleSeconds = Annotated[int, Meta(ge=60, le=MAX_TTL_S)]
Token = Annotated[str, Meta(min_length=1, max_length=128)]
Login = Annotated[str, Meta(min_length=1, max_length=254)]
Ip = Annotated[str, Meta(max_length=45)]
UserAgent = Annotated[str, Meta(max_length=512)]


class User(Struct, kw_only=True):
    user_id: str
    username: str
    email: str
    display_name: str | None = None
    role: Role
    status: UserStatus
    metadata: dict[str, Any] = {}
    created_at: IsoTime
    updated_at: IsoTime
    last_login_at: IsoTime | None = None


class UserCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    username: Username
    email: Email
    display_name: DisplayName | None = None
    role: Role = "viewer"
    status: UserStatus = "active"
    metadata: dict[str, Any] = {}
    password: Password | None = None


class UserPatch(Struct, forbid_unknown_fields=True, kw_only=True):
    """Only the fields sent change; display_name null clears it."""
    username: Username | UnsetType = UNSET
    email: Email | UnsetType = UNSET
    display_name: DisplayName | None | UnsetType = UNSET
    role: Role | UnsetType = UNSET
    status: UserStatus | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET
    password: Password | UnsetType = UNSET


class UserList(Struct, kw_only=True):
    items: list[User]
    next_cursor: str | None = None


class UserDeleted(Struct, kw_only=True):
    status: Literal["deleted"] = "deleted"
    user_id: str


class Credentials(Struct, forbid_unknown_fields=True):
    login: Login
    password: Annotated[str, Meta(max_length=256)]


class Authenticated(Struct):
    user: User


class UserSession(Struct, kw_only=True):
    session_id: str
    user_id: str
    created_at: IsoTime
    expires_at: IsoTime
    idle_expires_at: IsoTime
    last_seen_at: IsoTime
    ip: str | None = None
    user_agent: str | None = None
    data: dict[str, Any] = {}


class NewUserSession(UserSession, kw_only=True):
    token: str  # shown once; only its SHA-256 is stored


class SessionCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    user_id: Annotated[str, Meta(min_length=1, max_length=36)]
    ttl_seconds: TtlSeconds = 86_400
    idle_seconds: IdleSeconds = 3_600
    ip: Ip | None = None
    user_agent: UserAgent | None = None
    data: dict[str, Any] = {}


class TokenBody(Struct, forbid_unknown_fields=True):
    token: Token


class SessionData(Struct, forbid_unknown_fields=True):
    token: Token
    data: dict[str, Any]


class Validated(Struct):
    session: UserSession
    user: User


class UserSessionList(Struct):
    items: list[UserSession]


class Revoked(Struct, kw_only=True):
    status: Literal["revoked"] = "revoked"
    session_id: str | None = None


class RevokedCount(Struct):
    revoked: int
