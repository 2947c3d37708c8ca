"""API keys with scopes, per-key rate limits, slow clients."""

from __future__ import annotations

import hashlib
import socket
import time

import pytest

from testkit.service import TASKS, session, task, wait_for

KEYS = {"writer": "w-secret-0123456789", "reader": "r-secret-0123456789", "admin": "a-secret-0123456789",
        "slow": "s-secret-0123456789", "trickle": "t-secret-0123456789"}
AUTH = f"""
[auth]
keys = [
  {{ name = "writer", sha256 = "{hashlib.sha256(KEYS['writer'].encode()).hexdigest()}", scopes = ["write", "read"] }},
  {{ name = "reader", sha256 = "{hashlib.sha256(KEYS['reader'].encode()).hexdigest()}", scopes = ["read"] }},
  {{ name = "admin", sha256 = "{hashlib.sha256(KEYS['admin'].encode()).hexdigest()}", scopes = ["admin"] }},
  {{ name = "slow", sha256 = "{hashlib.sha256(KEYS['slow'].encode()).hexdigest()}", scopes = ["write"], rate_per_s = 2 }},
  {{ name = "trickle", sha256 = "{hashlib.sha256(KEYS['trickle'].encode()).hexdigest()}", scopes = ["write"], rate_per_s = 0.5 }},
]
"""


@pytest.fixture
def secured(service_factory, tmp_path):
    return service_factory(f"sqlite:///{tmp_path / 'store.db'}", extra_toml=AUTH, body_timeout=1.0)


def _h(name: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[name]}


def test_scopes(secured) -> None:
    body = {"tasks": [task("t-1", "s-1")]}
    assert secured.http.get("/health").status_code == 200  # load balancers need no key
    r = secured.post(TASKS, body)
    assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHORIZED"
    assert secured.post(TASKS, body, headers={"X-API-Key": "wrong"}).status_code == 401
    r = secured.post(TASKS, body, headers=_h("reader"))
    assert r.status_code == 403 and r.json()["error_code"] == "FORBIDDEN"
    assert secured.post("/api/v1/translation/sessions/batch", {"sessions": [session("s-1")]},
                        headers={"Authorization": f"Bearer {KEYS['writer']}"}).status_code == 202
    assert secured.post(TASKS, body, headers=_h("writer")).status_code == 202
    assert secured.http.post("/api/v1/translation/flush", headers=_h("writer")).status_code == 200
    assert secured.http.get("/api/v1/translation/sessions", headers=_h("reader")).status_code == 200
    assert secured.http.get("/api/v1/translation/sessions").status_code == 401
    assert secured.http.delete("/api/v1/translation/sessions/s-1", headers=_h("writer")).status_code == 403
    assert secured.http.delete("/api/v1/translation/sessions/s-1", headers=_h("admin")).status_code == 200
    # The query port enforces the same rules for clients that go there directly.
    direct = f"http://127.0.0.1:{secured.query_port}/api/v1/translation/sessions"
    assert secured.http.get(direct).status_code == 401
    assert secured.http.get(direct, headers=_h("reader")).status_code == 200
    log = secured.log.read_text()
    assert all(key not in log for key in KEYS.values())


def test_rate_limit_answers_429_with_retry_after(secured) -> None:
    answers = [secured.post(TASKS, {"tasks": [task(f"t-{i}", "s-1")]}, headers=_h("slow")) for i in range(12)]
    limited = [r for r in answers if r.status_code == 429]
    assert limited, [r.status_code for r in answers]
    assert limited[0].json()["error_code"] == "RATE_LIMITED" and int(limited[0].headers["Retry-After"]) >= 1
    assert all(r.status_code in (202, 429) for r in answers)


def test_rate_below_one_per_second_allows_one_request_per_interval(secured) -> None:
    # 0.5/s: one request every 2 s (per ingest process: the test service runs 2).
    def put(i: int) -> int:
        return secured.post(TASKS, {"tasks": [task(f"tr-{i}", "s-1")]}, headers=_h("trickle")).status_code

    burst = [put(i) for i in range(6)]
    assert burst.count(202) in (1, 2) and burst.count(429) >= 4, burst
    time.sleep(2.2)
    assert put(10) == 202


def test_slow_body_is_cut_off_with_408(secured) -> None:
    with socket.create_connection(("127.0.0.1", secured.ingest_port), timeout=10) as sock:
        sock.sendall(f"POST {TASKS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"X-API-Key: {KEYS['writer']}\r\nContent-Length: 1000\r\n\r\n{{\"tasks\": [".encode())
        started = time.monotonic()
        answer = sock.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 8
    assert "REQUEST_TIMEOUT" in answer
    wait_for(lambda: secured.http.get("/health").status_code == 200, 5, "the service to keep answering")


def test_every_route_of_both_apps_declares_its_scope(tmp_path) -> None:
    from typing import get_args

    from starlette.applications import Starlette
    from starlette.routing import Route

    from core.auth import Access, ScopedRoute
    from core.settings import load_settings
    from ingest.app import create_app as ingest_app
    from query.app import create_app as query_app

    (tmp_path / "config.toml").write_text("")
    settings = load_settings(tmp_path / "config.toml", environ={})
    declared: dict[tuple[str, str], str] = {}
    for app in (ingest_app(settings).ingest, query_app(settings)):
        assert isinstance(app, Starlette)
        for route in app.routes:
            assert isinstance(route, ScopedRoute), f"{getattr(route, 'path', route)} declares no scope"
            assert route.access in get_args(Access)
            assert isinstance(route, Route) and route.methods
            for method in route.methods - {"HEAD"}:
                declared[(method, route.path)] = route.access
    api = "/api/v1/translation"
    assert declared[("POST", f"{api}/tasks/batch")] == declared[("POST", f"{api}/flush")] == "write"
    assert declared[("DELETE", f"{api}/sessions/{{session_id}}")] == "admin"
    assert declared[("PATCH", f"{api}/sessions/{{session_id}}/status")] == "admin"
    assert declared[("GET", "/api/v1/system/config")] == declared[("POST", "/api/v1/system/dead-letters/retry")] == "admin"
    assert declared[("POST", f"{api}/recovery/restore/{{session_id}}")] == declared[("GET", "/metrics")] == "read"
    files = "/api/v1/files"
    assert declared[("POST", files)] == declared[("POST", f"{files}/uploads")] == "write"
    assert declared[("GET", f"{files}/{{file_id}}/content")] == declared[("POST", f"{files}/{{file_id}}/presign")] == "read"
    assert declared[("DELETE", f"{files}/{{file_id}}")] == "admin"
    users, user_sessions = "/api/v1/users", "/api/v1/user-sessions"
    assert declared[("POST", users)] == declared[("PATCH", f"{users}/{{user_id}}")] == "admin"
    assert declared[("DELETE", f"{users}/{{user_id}}")] == declared[("DELETE", f"{users}/{{user_id}}/sessions")] == "admin"
    assert declared[("GET", users)] == declared[("GET", f"{users}/{{user_id}}/sessions")] == "read"
    assert declared[("POST", f"{users}/authenticate")] == declared[("POST", f"{user_sessions}/validate")] == "write"
    assert declared[("DELETE", f"{user_sessions}/{{session_id}}")] == "admin"
    # A presigned URL's signature is its credential (files/signing.py checks it before anything else).
    signed = {f"{files}/{{file_id}}/download", f"{files}/uploads/{{file_id}}/content"}
    assert {path for (_, path), access in declared.items() if access == "open"} == {"/health", "/openapi.json",
                                                                                    "/docs"} | signed


def test_file_scopes_and_presigned_urls_without_a_key(secured) -> None:
    files = "/api/v1/files"
    assert secured.http.post(files, params={"filename": "a.txt"}, content=b"abc").status_code == 401
    assert secured.http.post(files, params={"filename": "a.txt"}, content=b"abc", headers=_h("reader")).status_code == 403
    made = secured.http.post(files, params={"filename": "a.txt"}, content=b"abc", headers=_h("writer"))
    assert made.status_code == 201
    file_id = made.json()["file_id"]
    assert secured.http.get(f"{files}/{file_id}/content").status_code == 401
    assert secured.http.delete(f"{files}/{file_id}", headers=_h("writer")).status_code == 403
    url = secured.http.post(f"{files}/{file_id}/presign", json={}, headers=_h("reader")).json()["url"]
    assert secured.http.get(url).content == b"abc"  # no key: the signature is the credential
    assert secured.http.get(url.replace("signature=", "signature=0")).status_code == 403
    assert secured.http.delete(f"{files}/{file_id}", headers=_h("admin")).status_code == 200
    assert secured.http.get(url).status_code == 404


def test_user_management_needs_admin_and_logins_need_write(secured) -> None:
    users = "/api/v1/users"
    body = {"username": "ann", "email": "ann@example.com", "password": "correct horse"}
    assert secured.http.post(users, json=body).status_code == 401
    assert secured.http.post(users, json=body, headers=_h("writer")).status_code == 403
    made = secured.http.post(users, json=body, headers=_h("admin"))
    assert made.status_code == 201, made.text
    assert secured.http.get(f"{users}/{made.json()['user_id']}", headers=_h("reader")).status_code == 200
    login = {"login": "ann", "password": "correct horse"}
    assert secured.http.post(f"{users}/authenticate", json=login, headers=_h("reader")).status_code == 403
    assert secured.http.post(f"{users}/authenticate", json=login, headers=_h("writer")).status_code == 200
    assert "correct horse" not in secured.log.read_text()
