"""The session store: login sessions of the platform's users, and the
failure counts that limit password guessing, behind one small interface.

Two plugins, chosen by `user_sessions.url`: Redis (`redis://host:6379/0`,
shared by every node) and the embedded default, a SQLite file
(`sqlite:///data/sessions.db`) with an expiry sweeper. One contract test
(tests/plugins/test_session_store_contract.py) runs over both.

A session is stored under the SHA-256 of its token (the token itself is
never stored). It is valid while now < expires_us (absolute) and now <
idle_expires_us (sliding: each validation moves it to now + idle_us, capped
at expires_us). Every method is blocking; the query process runs them in
its own threads.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import urlsplit

import msgspec


class SessionStoreError(Exception):
    """The store cannot be reached or failed; nothing was changed (or the change is unknown)."""


class SessionRecord(msgspec.Struct, frozen=True):
    session_id: str
    user_id: str
    created_us: int
    expires_us: int  # absolute expiry
    idle_us: int  # the sliding window's length
    idle_expires_us: int  # min(last validation + idle_us, expires_us)
    last_seen_us: int
    ip: str | None = None
    user_agent: str | None = None
    data: dict[str, Any] = {}

    def is_valid(self, now_us: int) -> bool:
        return now_us < self.expires_us and now_us < self.idle_expires_us


class Failures(msgspec.Struct, frozen=True):
    count: int  # failures counted in the current window
    retry_after_s: float  # seconds until the window ends (0 when no window is open)


class SessionStore(Protocol):
    scheme: str  # "redis" or "sqlite"

    def create(self, token_hash: str, record: SessionRecord) -> None:
        """Store a new session (token_hash is new; session_id unique)."""

    def touch(self, token_hash: str, now_us: int) -> SessionRecord | None:
        """Validate: the session as stored after sliding its idle expiry, or
        None when it is unknown, revoked or expired. The slide is written only
        when it moves idle_expires_us by at least touch_granularity(idle_us), so
        that most validations are reads; the answer is what is stored. A
        revoke that ran before never comes back (no write resurrects a key)."""

    def set_data(self, token_hash: str, data: dict[str, Any], now_us: int) -> SessionRecord | None:
        """Replace data of a valid session; the session, or None as for touch."""

    def revoke(self, token_hash: str) -> bool:
        """True when a session was removed."""

    def revoke_id(self, session_id: str) -> bool:
        """Revoke by session_id (admin); True when a session was removed."""

    def revoke_user(self, user_id: str) -> int:
        """Revoke every session of the user; how many were removed."""

    def list_user(self, user_id: str, now_us: int) -> list[SessionRecord]:
        """The user's valid sessions, oldest first."""

    def count_active(self, now_us: int) -> int:
        """Valid sessions of all users (for the sessions-active gauge)."""

    def sweep(self, now_us: int) -> int:
        """Remove expired sessions and stale index entries; how many sessions were removed."""

    def note_failure(self, login_key: str, window_s: float, now_us: int) -> Failures:
        """Count one failed login for login_key. The window opens at the first
        failure and lasts window_s; counts of an ended window start over."""

    def failures(self, login_key: str, now_us: int) -> Failures:
        """The open window's count for login_key (0 when none is open)."""

    def clear_failures(self, login_key: str) -> None:
        """A successful login ends the window."""

    def check(self) -> None:
        """Raise SessionStoreError unless the store answers now."""

    def close(self) -> None: ...


def touch_granularity(idle_us: int) -> int:
    """The smallest slide worth a write: 1% of the idle window, at most 60 s."""
    return min(idle_us // 100, 60_000_000)


def open_session_store(url: str, connect_timeout: float = 5.0) -> SessionStore:
    """The store named by url: redis://host:port/db or sqlite:///path."""
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):
        from plugins.sessions.redis import RedisSessionStore
        return RedisSessionStore.connect(url, connect_timeout)
    if scheme == "sqlite":
        from plugins.sessions.sqlite import SqliteSessionStore
        return SqliteSessionStore.connect(url)
    raise ValueError(f"no session store for scheme {scheme!r}")
