"""GET /sessions and GET /sessions/{id}: shapes and values of API.md, filters,
sorting and the edges of paging, on both sinks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from testkit.service import session
from tests.query.support import (
    DETAIL_FIELDS,
    PAGE_FIELDS,
    SUMMARY_FIELDS,
    BASE,
    Api,
    now_iso,
    parse_iso,
    unique,
)


def _window(api: Api, batches: list[list[dict]]) -> dict[str, str]:
    """Write each batch in its own request (so each has its own created_at) and
    return the from_date/to_date window that holds exactly them."""
    start = now_iso()
    for batch in batches:
        api.write(sessions=batch, flush=False)
    assert api.service.flush().status_code == 200
    return {"from_date": start, "to_date": now_iso()}


def test_summaries_carry_the_derived_fields(api: Api) -> None:
    a, b, c = unique("sa"), unique("sb"), unique("sc")
    window = _window(api, [[
        session(a, total_tasks=10, completed_tasks=3, failed_tasks=2, processing_tasks=1,
                updated_at="2025-01-02T03:04:05.123456+08:00"),
        session(b),  # total 0: progress 0.0, not a division by zero
        session(c, total_tasks=3, completed_tasks=2, failed_tasks=2),  # inconsistent counters: pending stays >= 0
    ]])
    body = api.ok("/sessions", **window)
    assert set(body) == PAGE_FIELDS
    assert (body["total"], body["page"], body["page_size"], body["total_pages"], body["next_cursor"]) == (3, 1, 20, 1, None)
    items = {item["session_id"]: item for item in body["items"]}
    assert all(set(item) == SUMMARY_FIELDS for item in items.values())
    assert {k: items[a][k] for k in ("total_tasks", "completed_tasks", "failed_tasks", "processing_tasks",
                                     "pending_tasks", "progress", "status", "filename")} == {
        "total_tasks": 10, "completed_tasks": 3, "failed_tasks": 2, "processing_tasks": 1,
        "pending_tasks": 4, "progress": 30.0, "status": "processing", "filename": "game.xlsx"}
    assert items[a]["updated_at"] == "2025-01-01T19:04:05.123456Z"  # the version, in UTC
    assert (items[b]["progress"], items[b]["pending_tasks"]) == (0.0, 0)
    assert (items[c]["progress"], items[c]["pending_tasks"]) == (66.7, 0)
    for item in items.values():
        assert window["from_date"] <= item["created_at"] <= window["to_date"]


def test_detail_has_every_field(api: Api) -> None:
    sid = unique("sd")
    game = {"game_name": "幻想", "source_language": "zh", "nested": {"list": [1, 2.5, None, "ü"]},
            "quoted": "a \"b\" \\ c\n\u0001 😀"}
    api.write(sessions=[session(sid, file_path="/data/幻想.xlsx", llm_provider="qwen", game_info=game,
                                metadata={"k": "v"}, total_tasks=4, completed_tasks=1, status="processing")])
    body = api.ok(f"/sessions/{sid}")
    assert set(body) == DETAIL_FIELDS
    assert body["game_info"] == game and body["metadata"] == {"k": "v"}
    assert (body["file_path"], body["llm_provider"], body["pending_tasks"], body["progress"]) == (
        "/data/幻想.xlsx", "qwen", 3, 25.0)
    created = parse_iso(body["created_at"])
    eta = parse_iso(body["estimated_completion"])
    # One of four done so far: three more take about three times as long again.
    assert eta > datetime.now(UTC) - timedelta(seconds=1)
    assert eta - created < timedelta(minutes=5)


def test_estimated_completion_is_null_when_it_cannot_be_estimated(api: Api) -> None:
    done, idle, empty = unique("done"), unique("idle"), unique("empty")
    api.write(sessions=[session(done, status="completed", total_tasks=5, completed_tasks=5),
                        session(idle, total_tasks=5), session(empty, metadata=None)])
    for sid in (done, idle, empty):
        body = api.ok(f"/sessions/{sid}")
        assert body["estimated_completion"] is None, body
    assert api.ok(f"/sessions/{empty}")["game_info"] is None


def test_unknown_session_is_404(api: Api) -> None:
    r = api.get("/sessions/no-such-session")
    assert r.status_code == 404
    assert r.json() == {"detail": "Session not found", "error_code": "SESSION_NOT_FOUND",
                        "session_id": "no-such-session", "errors": []}


def test_filters_by_status_and_created_at(api: Api) -> None:
    ids = {status: unique(status[:4]) for status in ("pending", "processing", "completed", "failed", "cancelled")}
    window = _window(api, [[session(sid, status=status) for status, sid in ids.items()]])
    for status, sid in ids.items():
        body = api.ok("/sessions", status=status, **window)
        assert [item["session_id"] for item in body["items"]] == [sid]
    day = window["from_date"][:10]
    next_day = (datetime.fromisoformat(day) + timedelta(days=1)).date().isoformat()
    # A date alone as to_date includes that whole day; as from_date it starts at midnight.
    assert api.ok("/sessions", from_date=window["from_date"], to_date=window["to_date"][:10])["total"] == 5
    assert api.ok("/sessions", from_date=next_day)["total"] == 0
    assert api.ok("/sessions", from_date=day, to_date=window["to_date"], status="failed")["total"] >= 1
    # The same instant with an offset.
    start = parse_iso(window["from_date"]).astimezone(timezone(timedelta(hours=8)))
    assert api.ok("/sessions", from_date=start.isoformat(), to_date=window["to_date"])["total"] == 5
    assert api.ok("/sessions", from_date=window["to_date"], to_date=window["to_date"])["total"] == 0


def test_sorting(api: Api) -> None:
    ids = [unique(f"sort{i}") for i in range(4)]
    versions = ["2025-03-01T00:00:00Z", "2025-01-01T00:00:00Z", "2025-04-01T00:00:00Z", "2025-02-01T00:00:00Z"]
    window = _window(api, [[session(sid, updated_at=v)] for sid, v in zip(ids, versions)])

    def order(**params: str) -> list[str]:
        return [item["session_id"] for item in api.ok("/sessions", **window, **params)["items"]]

    assert order() == ids[::-1]  # default: created_at, newest first
    assert order(sort_by="created_at", order="asc") == ids
    assert order(sort_by="updated_at", order="asc") == [ids[1], ids[3], ids[0], ids[2]]
    assert order(sort_by="updated_at", order="desc") == [ids[2], ids[0], ids[3], ids[1]]


def test_ties_on_created_at_are_ordered_by_id(api: Api) -> None:
    ids = sorted(unique("tie") for _ in range(5))
    window = _window(api, [[session(sid) for sid in ids]])  # one request: one created_at
    items = api.ok("/sessions", **window)["items"]
    assert len({item["created_at"] for item in items}) == 1
    assert [item["session_id"] for item in items] == ids[::-1]


def test_paging_edges(api: Api) -> None:
    ids = [unique(f"pg{i}") for i in range(7)]
    window = _window(api, [[session(sid)] for sid in ids])
    pages = [api.ok("/sessions", page=n, page_size=3, order="asc", **window) for n in (1, 2, 3, 4, 99)]
    assert [[i["session_id"] for i in p["items"]] for p in pages] == [ids[0:3], ids[3:6], ids[6:7], [], []]
    assert all((p["total"], p["total_pages"], p["page_size"]) == (7, 3, 3) for p in pages)
    assert [p["page"] for p in pages] == [1, 2, 3, 4, 99]
    assert [p["next_cursor"] is None for p in pages] == [False, False, True, True, True]
    exact = api.ok("/sessions", page_size=7, **window)
    assert (exact["total_pages"], len(exact["items"]), exact["next_cursor"]) == (1, 7, None)
    one = api.ok("/sessions", page_size=1, page=7, **window)
    assert [i["session_id"] for i in one["items"]] == [ids[0]] and one["total_pages"] == 7
    empty = api.ok("/sessions", status="cancelled", from_date="2999-01-01")
    assert (empty["total"], empty["total_pages"], empty["items"], empty["next_cursor"]) == (0, 0, [], None)


def test_totals_are_exact_after_every_flush(api: Api) -> None:
    """A total may be reused between two flushes, never across one: page 2
    (which needs a count) after more writes, a delete and a status change."""
    start = now_iso()
    ids = [unique("tot") for _ in range(6)]
    api.write(sessions=[session(sid, status="pending") for sid in ids])

    def total(**params: str) -> int:
        return api.ok("/sessions", page=2, page_size=2, from_date=start, **params)["total"]

    assert [total(), total(), total(status="pending")] == [6, 6, 6]
    api.write(sessions=[session(unique("tot"), status="pending") for _ in range(3)])
    assert [total(), total(status="pending")] == [9, 9]
    assert api.service.http.delete(f"{BASE}/sessions/{ids[0]}").json()["status"] == "deleted"
    assert [total(), total(status="pending")] == [8, 8]
    changed = api.service.http.patch(f"{BASE}/sessions/{ids[1]}/status", json={"status": "failed"})
    assert changed.status_code == 200, changed.text
    assert [total(), total(status="pending"), total(status="failed")] == [8, 7, 1]
