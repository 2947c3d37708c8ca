"""Query-string validation: a bad parameter is a 422 naming it, in API.md's
error shape; good edge values are accepted."""

from __future__ import annotations

import pytest

from tests.query.support import Api

BAD = [
    ("/sessions", {"page": "0"}, "page"),
    ("/sessions", {"page": "-1"}, "page"),
    ("/sessions", {"page": "two"}, "page"),
    ("/sessions", {"page": "1.5"}, "page"),
    ("/sessions", {"page_size": "0"}, "page_size"),
    ("/sessions", {"page_size": "101"}, "page_size"),
    ("/sessions", {"page_size": "1000"}, "page_size"),
    ("/sessions", {"sort_by": "password"}, "sort_by"),
    ("/sessions", {"sort_by": "created_at; DROP TABLE translation_sessions"}, "sort_by"),
    ("/sessions", {"order": "sideways"}, "order"),
    ("/sessions", {"status": "done"}, "status"),
    ("/sessions", {"from_date": "yesterday"}, "from_date"),
    ("/sessions", {"to_date": "2025-13-01"}, "to_date"),
    ("/sessions", {"from_date": "2025-02-30"}, "from_date"),
    ("/sessions", {"to_date": "2025-09-30T25:00:00Z"}, "to_date"),
    ("/sessions", {"cursor": "%%%"}, "cursor"),
    ("/tasks", {"status": "cancelled"}, "status"),
    ("/tasks", {"page_size": "1000"}, "page_size"),
    ("/tasks", {"from_date": "2025-09-30T10:00:00+25:00"}, "from_date"),
    ("/tasks", {"session_id": "s" * 37}, "session_id"),
    ("/tasks", {"page_size": "\x1c1"}, "page_size"),  # str.strip() would eat \x1c; int() would not
    ("/tasks", {"page": "\u00b2"}, "page"),  # a digit to str.isdigit(), not to int()
    ("/tasks", {"page": " 2"}, "page"),
]


@pytest.mark.parametrize(("path", "params", "field"), BAD, ids=[f"{p}?{next(iter(q.items()))}" for p, q, _ in BAD])
def test_bad_parameter_is_422(api: Api, path: str, params: dict, field: str) -> None:
    r = api.get(path, **params)
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"detail", "error_code", "errors"}
    assert body["error_code"] == "VALIDATION_ERROR" and body["detail"]
    assert [e["field"] for e in body["errors"]] == [field]
    assert all(e["message"] for e in body["errors"])


def test_every_bad_parameter_is_named(api: Api) -> None:
    r = api.get("/sessions", page="0", page_size="1000", sort_by="password", order="sideways", to_date="x")
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["errors"]} == {"page", "page_size", "sort_by", "order", "to_date"}


def test_session_tasks_parameters_are_checked_before_the_session(api: Api) -> None:
    r = api.get("/sessions/no-such-session/tasks", status="done", page="0")
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["errors"]} == {"status", "page"}


@pytest.mark.parametrize("params", [
    {"page_size": "100"}, {"page_size": "1"}, {"page": "10000"},
    {"from_date": "2025-09-30T10:15:30Z"}, {"from_date": "2025-09-30T18:15:30+08:00"},
    {"from_date": "2025-09-30T10:15:30.123456Z"}, {"to_date": "2025-09-30"}, {"from_date": "2025-09-30 10:15"},
    {"status": ""}, {"from_date": "0001-01-01", "to_date": "9999-12-31"},
    {"sort_by": "updated_at", "order": "asc"},
])
def test_good_edge_values_are_accepted(api: Api, params: dict) -> None:
    r = api.get("/sessions", **params)
    assert r.status_code == 200, r.text


def test_an_offset_sent_unencoded_still_parses(api: Api) -> None:
    # '+08:00' typed into a URL arrives as ' 08:00'.
    r = api.query.get("/api/v1/translation/sessions?from_date=2025-09-30T18:15:30+08:00")
    assert r.status_code == 200, r.text
