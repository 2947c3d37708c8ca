"""The user directory: the `users` table in the sink's database (SQLite or
MySQL/MariaDB), written synchronously by the query process.

Usernames and emails are unique without regard to case, and the database
enforces it: each has a `*_key` column holding its casefolded form under a
binary collation with a unique index, so two concurrent creates of "Ann"
and "ann" cannot both commit, on either database. A refusal comes back as
Duplicate naming the index; the caller turns it into 409.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec

from core.settings import SinkSettings
from plugins import SinkError
from plugins.direct_db import Cursor, DirectDatabase, DirectTables, Duplicate, Execute

__all__ = ["Duplicate", "DirectoryError", "UserDirectory", "UserFilter", "UserRow"]

COLUMNS = ("user_id", "username", "email", "display_name", "role", "status", "metadata", "password_hash",
           "created_at", "updated_at", "last_login_at")
_SELECT = ", ".join(COLUMNS)
_METADATA = msgspec.json.Decoder(dict[str, Any])

MYSQL_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS users (
        user_id VARCHAR(36) NOT NULL PRIMARY KEY,
        username VARCHAR(64) NOT NULL,
        username_key VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL COMMENT 'casefolded',
        email VARCHAR(254) NOT NULL,
        email_key VARCHAR(254) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL COMMENT 'casefolded',
        display_name VARCHAR(128) NULL,
        display_key VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL COMMENT 'casefolded',
        role VARCHAR(16) NOT NULL,
        status VARCHAR(16) NOT NULL,
        metadata TEXT NOT NULL COMMENT 'JSON object',
        password_hash VARCHAR(255) NULL COMMENT 'Argon2id, PHC string',
        created_at DATETIME(6) NOT NULL,
        updated_at DATETIME(6) NOT NULL,
        last_login_at DATETIME(6) NULL,
        UNIQUE KEY uq_users_username (username_key),
        UNIQUE KEY uq_users_email (email_key),
        KEY idx_users_created (created_at, user_id),
        KEY idx_users_status_created (status, created_at, user_id),
        KEY idx_users_role_created (role, created_at, user_id),
        KEY idx_users_display (display_key)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE {collation}""",
)

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY, username TEXT NOT NULL, username_key TEXT NOT NULL, email TEXT NOT NULL,
    email_key TEXT NOT NULL, display_name TEXT, display_key TEXT, role TEXT NOT NULL, status TEXT NOT NULL,
    metadata TEXT NOT NULL, password_hash TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    last_login_at TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS uq_users_username ON users (username_key);
CREATE UNIQUE INDEX IF NOT EXISTS uq_users_email ON users (email_key);
CREATE INDEX IF NOT EXISTS idx_users_created ON users (created_at, user_id);
CREATE INDEX IF NOT EXISTS idx_users_status_created ON users (status, created_at, user_id);
CREATE INDEX IF NOT EXISTS idx_users_role_created ON users (role, created_at, user_id);
CREATE INDEX IF NOT EXISTS idx_users_display ON users (display_key);
"""


class DirectoryError(SinkError):
    """The users table cannot be used now; nothing was changed."""


class UserRow(NamedTuple):
    user_id: str
    username: str
    email: str
    display_name: str | None
    role: str
    status: str
    metadata: dict[str, Any]
    password_hash: str | None
    created_at: str  # storage text, UTC
    updated_at: str
    last_login_at: str | None


class UserFilter(msgspec.Struct, frozen=True):
    status: str | None = None
    role: str | None = None
    prefix: str | None = None  # casefolded prefix of username, email or display name


def casefold_key(text: str | None) -> str | None:
    return None if text is None else text.casefold()


def _row(values: Sequence[Any]) -> UserRow:
    return UserRow(values[0], values[1], values[2], values[3], values[4], values[5], _METADATA.decode(values[6]),
                   values[7], values[8], values[9], values[10])


def _like_prefix(prefix: str) -> str:
    # '!' escapes: a backslash means different things in MySQL's and SQLite's string literals
    return prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"


def is_username_key(duplicate: Duplicate) -> bool:
    return "username" in duplicate.key


def is_email_key(duplicate: Duplicate) -> bool:
    return "email" in duplicate.key


class UserDirectory(DirectTables):
    @classmethod
    def open(cls, settings: SinkSettings) -> UserDirectory:
        return cls(DirectDatabase(settings, MYSQL_SCHEMA, SQLITE_SCHEMA, DirectoryError, "user directory"))

    # -- writes ------------------------------------------------------------

    def create(self, row: UserRow) -> None:
        """Raises Duplicate when the username or email is taken."""
        self._db.write(lambda execute, cur: execute(
            f"INSERT INTO users ({_SELECT}, username_key, email_key, display_key)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            *row[:6], msgspec.json.encode(row.metadata).decode(), *row[7:],
            casefold_key(row.username), casefold_key(row.email), casefold_key(row.display_name)))

    def update(self, user_id: str, changes: dict[str, Any], updated_at: str | None) -> UserRow | None:
        """Set the given columns (and their *_key twins, and updated_at unless
        None: a login is not an edit); the row as stored after, or None when
        the user does not exist. Raises Duplicate."""
        values = dict(changes) if updated_at is None else dict(changes, updated_at=updated_at)
        for column in ("username", "email", "display_name"):
            if column in values:
                values[column.replace("_name", "") + "_key"] = casefold_key(values[column])
        if "metadata" in values:
            values["metadata"] = msgspec.json.encode(values["metadata"]).decode()

        def work(execute: Execute, cur: Cursor) -> UserRow | None:
            execute(f"UPDATE users SET {', '.join(f'{c} = %s' for c in values)} WHERE user_id = %s",
                    *values.values(), user_id)
            if cur.rowcount == 0:
                return None
            execute(f"SELECT {_SELECT} FROM users WHERE user_id = %s", user_id)
            return _row(cur.fetchone())
        return self._db.write(work)

    def delete(self, user_id: str) -> bool:
        def work(execute: Execute, cur: Cursor) -> bool:
            execute("DELETE FROM users WHERE user_id = %s", user_id)
            return cur.rowcount > 0
        return self._db.write(work)

    # -- reads -------------------------------------------------------------

    def get(self, user_id: str) -> UserRow | None:
        rows = self._db.read(f"SELECT {_SELECT} FROM users WHERE user_id = %s", user_id)
        return _row(rows[0]) if rows else None

    def by_login(self, login: str) -> UserRow | None:
        """The user whose username or email is `login`, without regard to case."""
        key = login.casefold()
        rows = self._db.read(f"SELECT {_SELECT} FROM users WHERE username_key = %s UNION ALL"
                             f" SELECT {_SELECT} FROM users WHERE email_key = %s", key, key)
        return _row(rows[0]) if rows else None

    def list(self, flt: UserFilter, after: tuple[str, ...] | None, limit: int) -> list[UserRow]:
        """Users newest first (created_at, user_id descending), strictly after `after`."""
        where: list[str] = []
        args: list[Any] = []
        for column in ("status", "role"):
            value = getattr(flt, column)
            if value is not None:
                where.append(f"{column} = %s")
                args.append(value)
        if flt.prefix:
            like = _like_prefix(flt.prefix)
            where.append("(username_key LIKE %s ESCAPE '!' OR email_key LIKE %s ESCAPE '!'"
                         " OR display_key LIKE %s ESCAPE '!')")
            args += [like, like, like]
        if after is not None:
            where.append("(created_at < %s OR (created_at = %s AND user_id < %s))")
            args += [after[0], after[0], after[1]]
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.read(f"SELECT {_SELECT} FROM users{condition}"
                             f" ORDER BY created_at DESC, user_id DESC LIMIT {int(limit)}", *args)
        return [_row(r) for r in rows]

    def count(self) -> int:
        return int(self._db.read("SELECT COUNT(*) FROM users")[0][0])
