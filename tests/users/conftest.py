"""Fixtures for the users and user-sessions API: the service over each sink
and each session store (the embedded SQLite file, and the Redis on
127.0.0.1:6379 in a database of the tests' own, emptied before and after)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testkit.service import Service

USERS = "/api/v1/users"
USER_SESSIONS = "/api/v1/user-sessions"
# Cheap hashes keep the tests fast; the benchmark measures the shipped parameters.
FAST_HASH = "hash_time_cost = 1\nhash_memory_kib = 8192\n"


@pytest.fixture(params=["sqlite", "redis"])
def session_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return request.getfixturevalue("shared_redis")
    return f"sqlite:///{tmp_path / 'sessions.db'}"


def users_toml(session_store_url: str, cache_url: str = "memory", users: str = "") -> str:
    return (f"[users]\n{FAST_HASH}{users}\n[user_sessions]\nurl = \"{session_store_url}\"\n"
            f"[cache]\nurl = \"{cache_url}\"\n")


@pytest.fixture
def users_factory(service_factory, sink_url: str, session_store_url: str) -> Callable[..., Service]:
    def make(users: str = "", cache_url: str = "memory", **overrides: Any) -> Service:
        return service_factory(sink_url, extra_toml=users_toml(session_store_url, cache_url, users), **overrides)
    return make


@pytest.fixture
def users_service(users_factory) -> Service:
    return users_factory()


def new_user(service: Service, username: str, password: str | None = "correct horse", **fields: Any) -> dict:
    body = {"username": username, "email": f"{username.lower()}@example.com", **fields}
    if password is not None:
        body["password"] = password
    answer = service.http.post(USERS, json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()
