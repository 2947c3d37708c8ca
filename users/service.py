"""What the user routes do, over the user directory (sink), the session
store and the user cache, in the order that keeps reads fresh and secrets
out of sight:

- a user write commits, then bumps the user's cache epoch, then answers;
- deleting a user revokes all their sessions before it answers, and a
  validation re-reads the user (through the cache), so a session of a
  deleted or disabled user is refused at once;
- passwords are hashed and checked in a bounded pool of threads (Argon2id
  holds hash_memory_kib per hash in flight); an unknown login is checked
  against a dummy hash, so it costs what a wrong password costs;
- tokens are 32 random bytes (secrets.token_urlsafe); only their SHA-256
  reaches the store, and no log line or error carries one.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import argon2
import msgspec

from core import metrics
from core.errors import ClientError, Conflict, FieldError, Invalid, NotFound, TooManyRequests
from core.settings import Settings
from core.times import db_text, iso_z, now_us
from persistence_api.users import (
    MAX_METADATA_BYTES,
    MAX_SESSION_DATA_BYTES,
    NewUserSession,
    SessionCreate,
    User,
    UserCreate,
    UserPatch,
    UserSession,
)
from plugins.sessions import SessionRecord, SessionStore, SessionStoreError, open_session_store
from plugins.user_directory import (
    Duplicate,
    UserDirectory,
    UserFilter,
    UserRow,
    is_email_key,
    is_username_key,
)
from query.read_threads import ReadThreads
from query.views import iso
from users.cache import CacheUnavailable, ReadThrough, open_backend

logger = logging.getLogger(__name__)
T = TypeVar("T")
USER_THREADS = 8  # directory and session-store calls in flight per process


class UserNotFound(NotFound):
    error_code = "USER_NOT_FOUND"

    def __init__(self, user_id: str) -> None:
        super().__init__("User not found", user_id=user_id)


class UserSessionNotFound(NotFound):
    error_code = "USER_SESSION_NOT_FOUND"

    def __init__(self, session_id: str) -> None:
        super().__init__("User session not found (unknown, revoked or expired)", session_id=session_id)


class UsernameTaken(Conflict):
    error_code = "USERNAME_TAKEN"

    def __init__(self) -> None:
        super().__init__("The username is already used (usernames ignore case)",
                         [FieldError("username", "already used")])


class EmailTaken(Conflict):
    error_code = "EMAIL_TAKEN"

    def __init__(self) -> None:
        super().__init__("The email is already used (emails ignore case)", [FieldError("email", "already used")])


class UserDisabled(Conflict):
    error_code = "USER_DISABLED"

    def __init__(self, user_id: str) -> None:
        super().__init__("The user is disabled: no session can be opened", user_id=user_id)


class InvalidCredentials(ClientError):
    status = 401
    error_code = "INVALID_CREDENTIALS"

    def __init__(self) -> None:
        super().__init__("The login or the password is wrong, or the user is disabled")


class SessionInvalid(ClientError):
    status = 401
    error_code = "SESSION_INVALID"

    def __init__(self) -> None:
        super().__init__("The session is unknown, revoked or expired")


class TooManyAttempts(TooManyRequests):
    error_code = "TOO_MANY_ATTEMPTS"


class SessionStoreUnavailable(Exception):
    """The session store failed: 503, logged, counted."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def login_key(login: str) -> str:
    return hashlib.sha256(login.casefold().encode()).hexdigest()


def user_view(row: UserRow) -> User:
    return User(user_id=row.user_id, username=row.username, email=row.email, display_name=row.display_name,
                role=row.role, status=row.status, metadata=row.metadata, created_at=iso(row.created_at),  # type: ignore[arg-type]
                updated_at=iso(row.updated_at), last_login_at=iso(row.last_login_at) if row.last_login_at else None)


def session_view(record: SessionRecord) -> UserSession:
    return UserSession(session_id=record.session_id, user_id=record.user_id, created_at=iso_z(record.created_us),
                       expires_at=iso_z(record.expires_us), idle_expires_at=iso_z(record.idle_expires_us),
                       last_seen_at=iso_z(record.last_seen_us), ip=record.ip, user_agent=record.user_agent,
                       data=record.data)


def _check_size(field: str, value: dict[str, Any], limit: int) -> None:
    if len(msgspec.json.encode(value)) > limit:
        raise Invalid([FieldError(field, f"must encode to at most {limit} bytes of JSON")])


def _encode_row(row: UserRow | None) -> Any:
    return None if row is None else list(row)


def _decode_row(value: Any) -> UserRow | None:
    return None if value is None else UserRow(*value)


class UserService:
    def __init__(self, settings: Settings) -> None:
        users = settings.users
        self.settings = users
        self.directory = UserDirectory.open(settings.sink)
        self.sessions: SessionStore = open_session_store(settings.user_sessions.url, settings.sink.connect_timeout)
        self.threads = ReadThreads(USER_THREADS)
        self.hashing = ReadThreads(users.hash_threads)
        self.hasher = argon2.PasswordHasher(time_cost=users.hash_time_cost, memory_cost=users.hash_memory_kib,
                                            parallelism=users.hash_parallelism, type=argon2.Type.ID)
        # Checked when a login is unknown or has no password: the same work as a real check.
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
        self.cache: ReadThrough[UserRow] = ReadThrough(
            open_backend(settings.cache.url, settings.cache.ttl, settings.spool.path, _encode_row, _decode_row,
                         settings.sink.connect_timeout), self.threads.run)

    def close(self) -> None:
        self.cache.close()
        self.threads.close()
        self.hashing.close()
        self.sessions.close()
        self.directory.close()

    async def _store(self, fn: Callable[..., T], *args: Any) -> T:
        """A session-store call in a thread; its failure becomes SessionStoreUnavailable (counted)."""
        try:
            return await self.threads.run(fn, *args)
        except SessionStoreError as exc:
            name = getattr(fn, "__name__", "call")
            metrics.SESSION_STORE_ERRORS.labels(name).inc()
            if self.sessions.scheme == "redis":
                metrics.REDIS_ERRORS.labels("sessions").inc()
            logger.warning("session store %s failed: %s", name, exc)
            raise SessionStoreUnavailable(str(exc)) from exc

    async def _invalidate(self, user_id: str) -> None:
        try:
            await self.cache.invalidate(user_id)
        except CacheUnavailable as exc:
            metrics.REDIS_ERRORS.labels("cache").inc()
            raise SessionStoreUnavailable(f"the user cache cannot be invalidated: {exc}") from exc

    # -- users -------------------------------------------------------------

    async def _load(self, user_id: str) -> UserRow | None:
        return await self.threads.run(self.directory.get, user_id)

    async def get_row(self, user_id: str) -> UserRow:
        row = await self.cache.get(user_id, self._load)
        if row is None:
            raise UserNotFound(user_id)
        return row

    async def create(self, body: UserCreate) -> User:
        _check_size("metadata", body.metadata, MAX_METADATA_BYTES)
        password_hash = None if body.password is None else await self.hashing.run(self.hasher.hash, body.password)
        now = db_text(now_us())
        row = UserRow(str(uuid.uuid4()), body.username, body.email, body.display_name, body.role, body.status,
                      body.metadata, password_hash, now, now, None)
        try:
            await self.threads.run(self.directory.create, row)
        except Duplicate as dup:
            raise _taken(dup) from None
        await self._invalidate(row.user_id)  # a miss cached before the create must not hide it
        return user_view(row)

    async def patch(self, user_id: str, body: UserPatch) -> User:
        changes = {name: getattr(body, name) for name in body.__struct_fields__
                   if getattr(body, name) is not msgspec.UNSET and name != "password"}
        if "metadata" in changes:
            _check_size("metadata", changes["metadata"], MAX_METADATA_BYTES)
        if body.password is not msgspec.UNSET:
            changes["password_hash"] = await self.hashing.run(self.hasher.hash, body.password)
        try:
            row = await self.threads.run(self.directory.update, user_id, changes, db_text(now_us()))
        except Duplicate as dup:
            raise _taken(dup) from None
        if row is None:
            raise UserNotFound(user_id)
        await self._invalidate(user_id)
        if changes.get("status") == "disabled":
            await self._store(self.sessions.revoke_user, user_id)
        return user_view(row)

    async def delete(self, user_id: str) -> None:
        deleted = await self.threads.run(self.directory.delete, user_id)
        if not deleted:
            raise UserNotFound(user_id)
        await self._invalidate(user_id)
        await self._store(self.sessions.revoke_user, user_id)

    async def list_users(self, flt: UserFilter, after: tuple[str, ...] | None, limit: int) -> list[UserRow]:
        return await self.threads.run(self.directory.list, flt, after, limit)

    async def authenticate(self, login: str, password: str) -> User:
        key = login_key(login)
        now = now_us()
        window = await self._store(self.sessions.failures, key, now)
        if window.count >= self.settings.max_failures:
            metrics.LOGINS.labels("limited").inc()
            raise TooManyAttempts(f"Too many failed logins for this login; retry in {window.retry_after_s:.0f} s",
                                  window.retry_after_s)
        row = await self.threads.run(self.directory.by_login, login)
        stored = row.password_hash if row is not None and row.password_hash else self._dummy_hash
        is_match = await self.hashing.run(self._verify, stored, password)
        if not is_match or row is None or not row.password_hash or row.status != "active":
            await self._store(self.sessions.note_failure, key, self.settings.failure_window, now)
            metrics.LOGINS.labels("failed").inc()
            raise InvalidCredentials()
        rehashed = None
        if self.hasher.check_needs_rehash(row.password_hash):
            rehashed = await self.hashing.run(self.hasher.hash, password)
        if window.count:
            await self._store(self.sessions.clear_failures, key)
        changes: dict[str, Any] = {"last_login_at": db_text(now)}
        if rehashed is not None:
            changes["password_hash"] = rehashed
        updated = await self.threads.run(self.directory.update, row.user_id, changes, None)
        await self._invalidate(row.user_id)
        metrics.LOGINS.labels("ok").inc()
        return user_view(updated or row)

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return bool(self.hasher.verify(stored, password))
        except argon2.exceptions.VerificationError:
            return False
        except argon2.exceptions.InvalidHashError:
            logger.error("a stored password hash cannot be read; the login is refused")
            return False

    # -- login sessions ----------------------------------------------------

    async def open_session(self, body: SessionCreate) -> NewUserSession:
        _check_size("data", body.data, MAX_SESSION_DATA_BYTES)
        row = await self.get_row(body.user_id)
        if row.status != "active":
            raise UserDisabled(row.user_id)
        token = secrets.token_urlsafe(32)
        now = now_us()
        idle_s = min(body.idle_seconds, body.ttl_seconds)  # a longer idle window: the absolute expiry governs
        record = SessionRecord(session_id=str(uuid.uuid4()), user_id=row.user_id, created_us=now,
                               expires_us=now + body.ttl_seconds * 1_000_000, idle_us=idle_s * 1_000_000,
                               idle_expires_us=now + idle_s * 1_000_000, last_seen_us=now, ip=body.ip,
                               user_agent=body.user_agent, data=body.data)
        await self._store(self.sessions.create, token_hash(token), record)
        view = session_view(record)
        return NewUserSession(token=token, **msgspec.structs.asdict(view))

    async def validate(self, token: str) -> tuple[UserSession, User]:
        record = await self._store(self.sessions.touch, token_hash(token), now_us())
        if record is None:
            raise SessionInvalid()
        row = await self.cache.get(record.user_id, self._load)
        if row is None or row.status != "active":
            raise SessionInvalid()  # deleted or disabled since: revoked with the user, or about to be
        return session_view(record), user_view(row)

    async def set_data(self, token: str, data: dict[str, Any]) -> UserSession:
        _check_size("data", data, MAX_SESSION_DATA_BYTES)
        record = await self._store(self.sessions.set_data, token_hash(token), data, now_us())
        if record is None:
            raise SessionInvalid()
        return session_view(record)

    async def revoke(self, token: str) -> None:
        await self._store(self.sessions.revoke, token_hash(token))

    async def revoke_id(self, session_id: str) -> None:
        if not await self._store(self.sessions.revoke_id, session_id):
            raise UserSessionNotFound(session_id)

    async def user_sessions(self, user_id: str) -> list[UserSession]:
        await self.get_row(user_id)
        return [session_view(r) for r in await self._store(self.sessions.list_user, user_id, now_us())]

    async def revoke_user(self, user_id: str) -> int:
        await self.get_row(user_id)
        return await self._store(self.sessions.revoke_user, user_id)


def _taken(dup: Duplicate) -> Conflict:
    if is_username_key(dup):
        return UsernameTaken()
    if is_email_key(dup):
        return EmailTaken()
    raise RuntimeError(f"unexpected unique key refused a user write: {dup.key}")
