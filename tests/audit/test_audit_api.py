"""The audit log API end to end, on each sink: write batches through ingest,
read them back through the query process as a client would."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from typing import Any
from datetime import UTC, datetime, timedelta

from testkit.service import Service, sink_rows

EVENTS = "/api/v1/audit/events"
BATCH = "/api/v1/audit/events/batch"


def event(event_id: str | None = None, **fields: object) -> dict:
    body = {"actor_id": "alice", "action": "session.create", "resource_type": "session", "outcome": "success",
            **fields}
    if event_id is not None:
        body["event_id"] = event_id
    return body


def at(minutes: int) -> str:
    return (datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def post_events(service: Service, events: list[dict]) -> dict:
    answer = service.post(BATCH, {"events": events})
    assert answer.status_code == 202, answer.text
    return answer.json()


def flushed(service: Service) -> None:
    answer = service.flush()
    assert answer.status_code == 200, answer.text


def walk(service: Service, **params: Any) -> list[dict]:
    """Every page of a list, following next_cursor."""
    items: list[dict] = []
    cursor = None
    while True:
        answer = service.http.get(EVENTS, params={**params, **({"cursor": cursor} if cursor else {})})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def test_batch_answers_ids_and_stores_each_event_once(service: Service) -> None:
    answer = post_events(service, [event("e-1", message="first"), event(), event("e-1", message="second")])
    assert answer["status"] == "accepted" and answer["count"] == 3
    ids = answer["event_ids"]
    assert ids[0] == "e-1" and ids[2] == "e-1" and ids[1] not in ("e-1", "") and len(ids[1]) <= 64
    post_events(service, [event("e-1", message="third"), event(ids[1], message="again")])  # a client's retry
    flushed(service)
    stored = {e["event_id"]: e for e in walk(service)}
    assert sorted(stored) == sorted({"e-1", ids[1]})
    assert stored["e-1"]["message"] == "first"  # of two items with one event_id, the first is kept
    assert stored[ids[1]]["message"] is None
    assert service.http.get("/api/v1/audit/verify").json()["status"] == "ok"


def test_event_reads_back_as_sent(service: Service) -> None:
    sent = event("full-1", occurred_at="2026-11-02T10:00:00.123456+02:00", actor_type="user", resource_id="s-9",
                 outcome="failure", ip="2001:db8::1", user_agent="tool/1.0 (测试)", request_id="req-7",
                 message="机器翻译完成 with 'quotes' and \\ backslash",
                 details={"nested": {"list": [1, "two", None, True]}, "text": "翻译"})
    post_events(service, [sent])
    flushed(service)
    got = service.http.get(f"{EVENTS}/full-1")
    assert got.status_code == 200, got.text
    body = got.json()
    assert list(body) == ["event_id", "occurred_at", "actor_id", "actor_type", "action", "resource_type",
                          "resource_id", "outcome", "ip", "user_agent", "request_id", "message", "details"]
    assert body["occurred_at"] == "2026-11-02T08:00:00.123456Z"
    assert {k: body[k] for k in sent if k != "occurred_at"} == {k: v for k, v in sent.items() if k != "occurred_at"}
    missing = service.http.get(f"{EVENTS}/nope")
    assert missing.status_code == 404 and missing.json()["error_code"] == "AUDIT_EVENT_NOT_FOUND"


def test_list_is_newest_first_with_filters_and_cursors(service: Service, rng: random.Random) -> None:
    minutes = list(range(250))
    rng.shuffle(minutes)  # sent in random order: the list orders by occurred_at, not by arrival
    events = [event(f"ev-{m:03d}", occurred_at=at(m), actor_id=f"actor-{m % 3}",
                    outcome="failure" if m % 5 == 0 else "success", resource_id=f"r-{m % 7}") for m in minutes]
    for start in range(0, len(events), 100):
        post_events(service, events[start:start + 100])
    flushed(service)

    everything = walk(service, limit=37)
    assert [e["event_id"] for e in everything] == [f"ev-{m:03d}" for m in sorted(minutes, reverse=True)]
    window = walk(service, actor_id="actor-1", outcome="failure", **{"from": at(30), "to": at(200)}, limit=3)
    expected = [m for m in sorted(minutes, reverse=True) if m % 3 == 1 and m % 5 == 0 and 30 <= m < 200]
    assert [e["event_id"] for e in window] == [f"ev-{m:03d}" for m in expected]
    by_resource = walk(service, resource_type="session", resource_id="r-4")
    assert len(by_resource) == sum(1 for m in minutes if m % 7 == 4)

    other = service.http.get(EVENTS, params={"actor_id": "actor-1", "limit": 2}).json()["next_cursor"]
    refused = service.http.get(EVENTS, params={"actor_id": "actor-2", "cursor": other})
    assert refused.status_code == 422  # a cursor belongs to its filters


def test_search_words_all_must_occur(service: Service) -> None:
    post_events(service, [
        event("zh", message="机器翻译完成，共 120 行"),
        event("en", message="Session FINISHED by the reviewer"),
        event("both", message="翻译 finished", details={"note": "Reviewer approved", "n": 3}),
        event("quote", message='he said "AND" OR * (maybe) 100% under_score \\ path'),
    ])
    flushed(service)

    def found(q: str) -> set[str]:
        answer = service.http.get(EVENTS, params={"q": q})
        assert answer.status_code == 200, (q, answer.text)
        return {e["event_id"] for e in answer.json()["items"]}

    assert found("翻译") == {"zh", "both"}
    assert found("机器翻译") == {"zh"}
    assert found("finished") == {"en", "both"}
    assert found("finished 翻译") == {"both"}
    assert found("reviewer approved") == {"both"}  # details' string values are searched too
    assert found("REVIEW") == {"en", "both"}
    assert found("missing") == set()
    for hostile in ['"AND"', "OR", "*", "(maybe)", "100%", "under_score", "\\", '"', "%", "_"]:
        assert found(hostile) == {"quote"}, hostile  # searched as text: no syntax, no match-all
    assert found("AND OR") == {"quote"}


def test_export_streams_every_match_oldest_first(service: Service) -> None:
    events = [event(f"x-{i:04d}", occurred_at=at(i), message=f"row {i}, 逗号",
                    details={"i": i} if i % 2 else None) for i in range(2500)]
    for start in range(0, len(events), 1000):
        post_events(service, events[start:start + 1000])
    flushed(service)

    ndjson = service.http.get("/api/v1/audit/export")
    assert ndjson.status_code == 200 and "attachment" in ndjson.headers["content-disposition"]
    lines = [json.loads(line) for line in ndjson.text.splitlines()]
    assert [e["event_id"] for e in lines] == [f"x-{i:04d}" for i in range(2500)]  # more than one chunk
    assert lines[1]["details"] == {"i": 1} and lines[0]["details"] is None

    answer = service.http.get("/api/v1/audit/export", params={"format": "csv", "from": at(10), "to": at(13)})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert rows[0] == ["event_id", "occurred_at", "actor_id", "actor_type", "action", "resource_type",
                       "resource_id", "outcome", "ip", "user_agent", "request_id", "message", "details"]
    assert [r[0] for r in rows[1:]] == ["x-0010", "x-0011", "x-0012"]
    assert rows[2][11] == "row 11, 逗号" and json.loads(rows[2][12]) == {"i": 11}
    bad = service.http.get("/api/v1/audit/export", params={"format": "xml"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "format"


def test_bad_input_is_explained_and_changes_nothing(service: Service) -> None:
    bad = service.post(BATCH, {"events": [
        event(), event(actor_id="", outcome="maybe", bogus=1, message="x" * 4097),
        event(details={"big": "y" * 40_000}), event(occurred_at="not a time")]})
    assert bad.status_code == 422, bad.text
    fields = {e["field"] for e in bad.json()["errors"]}
    assert {"events[1].actor_id", "events[1].outcome", "events[1].bogus", "events[1].message",
            "events[2].details", "events[3].occurred_at"} <= fields, bad.json()
    assert service.post(BATCH, {"events": []}).status_code == 422
    assert service.post(BATCH, {"events": [event()] * 1001}).status_code == 422
    for params in ({"limit": 0}, {"limit": 1001}, {"from": "yesterday"}, {"cursor": "garbled"},
                   {"outcome": "maybe"}, {"q": " ".join(f"w{i}" for i in range(17))}):
        answer = service.http.get(EVENTS, params=params)
        assert answer.status_code == 422 and answer.json()["error_code"] == "VALIDATION_ERROR", (params, answer.text)
    flushed(service)
    assert walk(service) == []


def test_service_records_its_own_events(service_factory, sink_url: str) -> None:
    admin_key, reader_key = "admin-key-0123456789", "reader-key-0123456789"
    auth = (f'[auth]\nkeys = [\n  {{ name = "ops", sha256 = "{hashlib.sha256(admin_key.encode()).hexdigest()}",'
            f' scopes = ["admin", "read", "write"] }},\n'
            f'  {{ name = "viewer", sha256 = "{hashlib.sha256(reader_key.encode()).hexdigest()}", scopes = ["read"] }},\n]\n'
            "[users]\nhash_time_cost = 1\nhash_memory_kib = 8192\n")
    service = service_factory(sink_url, extra_toml=auth)
    admin = {"X-API-Key": admin_key}
    created = service.http.post("/api/v1/users", json={"username": "carol", "email": "carol@example.com",
                                                       "password": "correct horse"}, headers=admin)
    assert created.status_code == 201, created.text
    user_id = created.json()["user_id"]
    wrong = service.http.post("/api/v1/users/authenticate", json={"login": "carol", "password": "wrong pass"},
                              headers=admin)
    assert wrong.status_code == 401
    assert service.http.delete("/api/v1/translation/sessions/none-such", headers=admin).status_code == 404
    assert service.http.get(EVENTS).status_code == 401  # no key: refused, and recorded
    assert service.http.delete(f"/api/v1/users/{user_id}", headers={"X-API-Key": reader_key}).status_code == 403
    assert service.http.post("/api/v1/translation/flush", headers=admin).status_code == 200

    answer = service.http.get("/api/v1/audit/export", headers=admin)
    assert answer.status_code == 200
    events = [json.loads(line) for line in answer.text.splitlines()]
    seen = {(e["action"], e["outcome"], e["actor_id"], e["resource_id"]) for e in events}
    assert ("user.create", "success", "ops", user_id) in seen
    assert ("user.authenticate", "failure", "ops", "carol") in seen
    assert ("session.delete", "failure", "ops", "none-such") in seen
    assert ("request.refused", "failure", "anonymous", f"GET {EVENTS}") in seen
    assert ("request.refused", "failure", "viewer", f"DELETE /api/v1/users/{user_id}") in seen
    assert all(e["actor_type"] == "service" and e["request_id"] for e in events)
    text = answer.text
    assert "correct horse" not in text and "wrong pass" not in text and admin_key not in text
    assert len(sink_rows(sink_url, "audit_events", "event_id")) == len(events)
