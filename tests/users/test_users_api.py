"""Users end to end, on both sinks and both session stores: what a backend
that manages users sees, including every way to get it wrong."""

from __future__ import annotations

import time

from testkit.service import Service
from tests.users.conftest import USER_SESSIONS, USERS, new_user

USER_FIELDS = {"user_id", "username", "email", "display_name", "role", "status", "metadata", "created_at",
               "updated_at", "last_login_at"}


def _count(service: Service) -> int:
    return len(service.http.get(USERS, params={"limit": 1000}).json()["items"])


def test_a_user_is_created_read_changed_listed_and_deleted(users_service: Service) -> None:
    http = users_service.http
    ann = new_user(users_service, "Ann", display_name="安 Ann", role="translator", metadata={"team": "zh"})
    assert set(ann) == USER_FIELDS  # never a password or its hash
    assert ann["role"] == "translator" and ann["status"] == "active" and ann["last_login_at"] is None
    assert ann["created_at"].endswith("Z")
    # Read-your-writes: the 201 means every later read sees it.
    assert http.get(f"{USERS}/{ann['user_id']}").json() == ann
    changed = http.patch(f"{USERS}/{ann['user_id']}", json={"display_name": "Ann Li", "metadata": {"x": 1}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["display_name"] == "Ann Li" and changed.json()["metadata"] == {"x": 1}
    assert changed.json()["username"] == "Ann" and changed.json()["role"] == "translator"  # only what was sent
    assert http.get(f"{USERS}/{ann['user_id']}").json()["display_name"] == "Ann Li"
    assert http.patch(f"{USERS}/{ann['user_id']}", json={"display_name": None}).json()["display_name"] is None

    bob = new_user(users_service, "bob", role="reviewer", status="disabled")
    assert http.get(USERS, params={"role": "reviewer"}).json()["items"] == [bob]
    assert [u["username"] for u in http.get(USERS, params={"status": "active"}).json()["items"]] == ["Ann"]
    assert [u["username"] for u in http.get(USERS, params={"q": "ANN@EXAMPLE"}).json()["items"]] == ["Ann"]
    assert [u["username"] for u in http.get(USERS, params={"q": "b"}).json()["items"]] == ["bob"]
    assert http.get(USERS, params={"q": "%"}).json()["items"] == []  # a wildcard is a character here

    deleted = http.delete(f"{USERS}/{bob['user_id']}")
    assert deleted.status_code == 200 and deleted.json() == {"status": "deleted", "user_id": bob["user_id"]}
    gone = http.get(f"{USERS}/{bob['user_id']}")
    assert gone.status_code == 404 and gone.json()["error_code"] == "USER_NOT_FOUND"
    assert http.delete(f"{USERS}/{bob['user_id']}").status_code == 404


def test_the_list_walks_every_user_once_by_cursor(users_service: Service) -> None:
    made = {new_user(users_service, f"user{i:02d}", password=None)["user_id"] for i in range(23)}
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 5}
        if cursor:
            params["cursor"] = cursor
        page = users_service.http.get(USERS, params=params).json()
        seen += [u["user_id"] for u in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 23 and set(seen) == made
    bad = users_service.http.get(USERS, params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cursor"


def test_usernames_and_emails_are_unique_without_regard_to_case(users_service: Service) -> None:
    http = users_service.http
    ann = new_user(users_service, "Ann")
    taken = http.post(USERS, json={"username": "ANN", "email": "other@example.com"})
    assert taken.status_code == 409 and taken.json()["error_code"] == "USERNAME_TAKEN"
    taken = http.post(USERS, json={"username": "ann2", "email": "ANN@Example.COM"})
    assert taken.status_code == 409 and taken.json()["error_code"] == "EMAIL_TAKEN"
    bob = new_user(users_service, "bob")
    moved = http.patch(f"{USERS}/{bob['user_id']}", json={"email": "Ann@example.com"})
    assert moved.status_code == 409 and moved.json()["error_code"] == "EMAIL_TAKEN"
    assert http.get(f"{USERS}/{bob['user_id']}").json() == bob  # nothing changed
    # A user may change the case of their own name.
    assert http.patch(f"{USERS}/{ann['user_id']}", json={"username": "ANN"}).json()["username"] == "ANN"


def test_bad_input_is_explained_and_changes_nothing(users_service: Service) -> None:
    http = users_service.http
    ann = new_user(users_service, "ann")
    cases = [
        ({"username": "zed", "email": "not-an-email"}, "email"),
        ({"username": "zed", "email": "zed@example.com", "role": "owner"}, "role"),
        ({"username": "zed", "email": "zed@example.com", "password": "short"}, "password"),
        ({"username": "z", "email": "zed@example.com"}, "username"),
        ({"username": "zed", "email": "zed@example.com", "user_id": "mine"}, "user_id"),
        ({"email": "zed@example.com"}, "username"),
    ]
    for body, field in cases:
        answer = http.post(USERS, json=body)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["error_code"] == "VALIDATION_ERROR" and answer.json()["errors"][0]["field"] == field
    not_json = http.post(USERS, content=b"{username: zed", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["error_code"] == "INVALID_JSON"
    patch = http.patch(f"{USERS}/{ann['user_id']}", json={"role": "root"})
    assert patch.status_code == 422 and patch.json()["errors"][0]["field"] == "role"
    unknown = http.patch(f"{USERS}/no-such-user", json={"role": "admin"})
    assert unknown.status_code == 404 and unknown.json()["error_code"] == "USER_NOT_FOUND"
    assert http.get(USERS, params={"role": "owner"}).status_code == 422
    assert _count(users_service) == 1 and http.get(f"{USERS}/{ann['user_id']}").json() == ann


def test_authenticate_answers_alike_for_every_failure_and_limits_guessing(users_factory) -> None:
    service = users_factory("max_failures = 3\nfailure_window = 3.0\n")
    http = service.http
    ann = new_user(service, "ann", password="correct horse")
    new_user(service, "off", password="correct horse", status="disabled")
    new_user(service, "nopass", password=None)
    ok = http.post(f"{USERS}/authenticate", json={"login": "ANN@example.com", "password": "correct horse"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["user"]["user_id"] == ann["user_id"] and ok.json()["user"]["last_login_at"] is not None
    failures = [http.post(f"{USERS}/authenticate", json={"login": login, "password": password})
                for login, password in (("ann", "wrong horse"), ("nobody", "correct horse"),
                                        ("off", "correct horse"), ("nopass", "anything at all"))]
    assert {f.status_code for f in failures} == {401}
    assert len({(f.json()["error_code"], f.json()["detail"]) for f in failures}) == 1  # the same answer
    # ann failed once; two more failures reach max_failures, then even the right password waits.
    for _ in range(2):
        assert http.post(f"{USERS}/authenticate", json={"login": "ann", "password": "nope nope"}).status_code == 401
    limited = http.post(f"{USERS}/authenticate", json={"login": "Ann", "password": "correct horse"})
    assert limited.status_code == 429 and limited.json()["error_code"] == "TOO_MANY_ATTEMPTS"
    assert 1 <= int(limited.headers["Retry-After"]) <= 3
    # Another login is not affected; once the window ends, the right password works again.
    assert http.post(f"{USERS}/authenticate", json={"login": "off", "password": "x"}).status_code == 401
    time.sleep(int(limited.headers["Retry-After"]) + 0.2)
    assert http.post(f"{USERS}/authenticate", json={"login": "ann", "password": "correct horse"}).status_code == 200
    metrics = http.get("/metrics").text
    assert 'persistence_logins_total{outcome="limited"} 1.0' in metrics
    assert 'persistence_logins_total{outcome="ok"} 2.0' in metrics


def test_a_login_session_slides_carries_data_and_ends_when_revoked(users_service: Service) -> None:
    http = users_service.http
    ann = new_user(users_service, "ann")
    made = http.post(USER_SESSIONS, json={"user_id": ann["user_id"], "ip": "10.0.0.1", "user_agent": "pytest",
                                          "data": {"locale": "zh-CN"}, "ttl_seconds": 7200, "idle_seconds": 600})
    assert made.status_code == 201, made.text
    session = made.json()
    token = session.pop("token")
    assert len(token) >= 43 and token not in users_service.tail(200)
    checked = http.post(f"{USER_SESSIONS}/validate", json={"token": token})
    assert checked.status_code == 200, checked.text
    assert checked.json()["user"] == http.get(f"{USERS}/{ann['user_id']}").json()
    assert checked.json()["session"]["session_id"] == session["session_id"]
    assert checked.json()["session"]["idle_expires_at"] >= session["idle_expires_at"]
    assert checked.json()["session"]["expires_at"] == session["expires_at"]
    data = http.patch(f"{USER_SESSIONS}/data", json={"token": token, "data": {"locale": "en"}})
    assert data.status_code == 200 and data.json()["data"] == {"locale": "en"}
    listed = http.get(f"{USERS}/{ann['user_id']}/sessions").json()["items"]
    assert [s["session_id"] for s in listed] == [session["session_id"]] and "token" not in listed[0]
    assert http.post(f"{USER_SESSIONS}/revoke", json={"token": token}).status_code == 200
    refused = http.post(f"{USER_SESSIONS}/validate", json={"token": token})
    assert refused.status_code == 401 and refused.json()["error_code"] == "SESSION_INVALID"
    assert http.patch(f"{USER_SESSIONS}/data", json={"token": token, "data": {}}).status_code == 401
    unknown = http.post(f"{USER_SESSIONS}/validate", json={"token": "x" * 43})
    assert unknown.status_code == 401 and unknown.json() == refused.json()


def test_revoking_all_deleting_or_disabling_a_user_ends_their_sessions_at_once(users_service: Service) -> None:
    http = users_service.http

    def login(user: dict) -> str:
        answer = http.post(USER_SESSIONS, json={"user_id": user["user_id"]})
        assert answer.status_code == 201, answer.text
        return answer.json()["token"]

    def valid(token: str) -> bool:
        return http.post(f"{USER_SESSIONS}/validate", json={"token": token}).status_code == 200

    ann, bob, cat = new_user(users_service, "ann"), new_user(users_service, "bob"), new_user(users_service, "cat")
    ann_tokens = [login(ann) for _ in range(3)]
    bob_token, cat_token = login(bob), login(cat)
    one = http.get(f"{USERS}/{ann['user_id']}/sessions").json()["items"][0]["session_id"]
    assert http.delete(f"{USER_SESSIONS}/{one}").json() == {"status": "revoked", "session_id": one}
    assert http.delete(f"{USER_SESSIONS}/{one}").status_code == 404
    assert sum(map(valid, ann_tokens)) == 2
    assert http.delete(f"{USERS}/{ann['user_id']}/sessions").json() == {"revoked": 2}
    assert not any(map(valid, ann_tokens)) and valid(bob_token) and valid(cat_token)
    assert http.delete(f"{USERS}/{bob['user_id']}").status_code == 200
    assert not valid(bob_token)
    assert http.patch(f"{USERS}/{cat['user_id']}", json={"status": "disabled"}).status_code == 200
    assert not valid(cat_token)
    refused = http.post(USER_SESSIONS, json={"user_id": cat["user_id"]})
    assert refused.status_code == 409 and refused.json()["error_code"] == "USER_DISABLED"
    missing = http.post(USER_SESSIONS, json={"user_id": bob["user_id"]})
    assert missing.status_code == 404 and missing.json()["error_code"] == "USER_NOT_FOUND"
    assert http.get(f"{USERS}/{bob['user_id']}/sessions").status_code == 404


def test_session_bodies_are_checked(users_service: Service) -> None:
    http = users_service.http
    ann = new_user(users_service, "ann")
    for body, field in (({"user_id": ann["user_id"], "ttl_seconds": 10}, "ttl_seconds"),
                        ({"user_id": ann["user_id"], "idle_seconds": 30}, "idle_seconds"),
                        ({"user_id": ann["user_id"], "data": "text"}, "data"),
                        ({"user_id": ann["user_id"], "data": {"x": "y" * 20_000}}, "data"),
                        ({}, "user_id")):
        answer = http.post(USER_SESSIONS, json=body)
        assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == field, (body, answer.text)
    assert http.post(f"{USER_SESSIONS}/validate", json={}).status_code == 422
    assert http.post(f"{USER_SESSIONS}/validate", content=b"token=abc",
                     headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 400
    assert http.get(f"{USERS}/{ann['user_id']}/sessions").json() == {"items": []}
