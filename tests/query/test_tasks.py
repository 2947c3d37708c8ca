"""GET /sessions/{id}/tasks, GET /tasks/{id} and GET /tasks on both sinks."""

from __future__ import annotations

import random

from testkit.service import session, task
from tests.query.support import PAGE_FIELDS, TASK_FIELDS, Api, now_iso, parse_iso, unique

NASTY = "quote ' double \" backslash \\ newline \n tab \t 中文 emoji 😀"


def test_a_task_reads_back_whole(api: Api) -> None:
    sid, tid = unique("s"), unique("t")
    api.write(sessions=[session(sid)], tasks=[task(
        tid, sid, source_text=NASTY, target_text="译文", context="ctx", status="failed", confidence=0.123456,
        error_message="timeout", retry_count=3, start_time="2025-09-30T18:15:30+08:00",
        end_time="2025-09-30T10:15:31.5Z", duration_ms=1500, updated_at="2025-09-30T10:16:00Z",
        row_index=7, column_name="D", sheet_name="Sheet 2", batch_id="b9")])
    body = api.ok(f"/tasks/{tid}")
    assert set(body) == TASK_FIELDS
    assert {k: v for k, v in body.items() if k != "created_at"} == {
        "task_id": tid, "session_id": sid, "batch_id": "b9", "sheet_name": "Sheet 2", "row_index": 7,
        "column_name": "D", "source_text": NASTY, "target_text": "译文", "context": "ctx", "status": "failed",
        "confidence": 0.1235, "error_message": "timeout", "retry_count": 3,
        "start_time": "2025-09-30T10:15:30.000000Z", "end_time": "2025-09-30T10:15:31.500000Z",
        "duration_ms": 1500, "updated_at": "2025-09-30T10:16:00.000000Z"}
    parse_iso(body["created_at"])


def test_unknown_task_is_404(api: Api) -> None:
    r = api.get("/tasks/no-such-task")
    assert r.status_code == 404
    assert r.json() == {"detail": "Task not found", "error_code": "TASK_NOT_FOUND", "task_id": "no-such-task",
                        "errors": []}


def _layout_session(api: Api, rng: random.Random) -> tuple[str, list[dict]]:
    sid = unique("lay")
    tasks = [task(f"{sid}-{sheet}-{row}-{col}", sid, sheet_name=sheet, row_index=row, column_name=col,
                  status=rng.choice(["pending", "processing", "completed", "failed"]))
             for sheet in ("Sheet2", "Sheet1", "Ärger") for row in (10, 2, 0) for col in ("C", "B")]
    rng.shuffle(tasks)
    api.write(sessions=[session(sid), session(unique("other"))], tasks=tasks)
    layout = sorted(tasks, key=lambda t: (t["sheet_name"].encode(), t["row_index"], t["column_name"]))
    return sid, layout


def test_session_tasks_in_sheet_row_column_order(api: Api, rng: random.Random) -> None:
    sid, layout = _layout_session(api, rng)
    body = api.ok(f"/sessions/{sid}/tasks", page_size=100)
    assert set(body) == PAGE_FIELDS | {"session_id"}
    assert (body["session_id"], body["total"], body["total_pages"], body["next_cursor"]) == (sid, 18, 1, None)
    assert [t["task_id"] for t in body["items"]] == [t["task_id"] for t in layout]
    assert all(set(t) == TASK_FIELDS for t in body["items"])
    page2 = api.ok(f"/sessions/{sid}/tasks", page_size=5, page=2)
    assert [t["task_id"] for t in page2["items"]] == [t["task_id"] for t in layout[5:10]]
    assert (page2["total"], page2["total_pages"]) == (18, 4)
    past = api.ok(f"/sessions/{sid}/tasks", page_size=5, page=5)
    assert (past["items"], past["total"], past["next_cursor"]) == ([], 18, None)


def test_session_tasks_filters(api: Api, rng: random.Random) -> None:
    sid, layout = _layout_session(api, rng)
    for status in ("pending", "processing", "completed", "failed"):
        body = api.ok(f"/sessions/{sid}/tasks", status=status, page_size=100)
        assert [t["task_id"] for t in body["items"]] == [t["task_id"] for t in layout if t["status"] == status]
        assert body["total"] == len(body["items"])
    body = api.ok(f"/sessions/{sid}/tasks", sheet_name="Ärger", page_size=100)
    assert [t["task_id"] for t in body["items"]] == [t["task_id"] for t in layout if t["sheet_name"] == "Ärger"]
    assert api.ok(f"/sessions/{sid}/tasks", sheet_name="Nope")["total"] == 0


def test_tasks_of_an_unknown_session_is_404(api: Api) -> None:
    r = api.get("/sessions/no-such-session/tasks")
    assert r.status_code == 404 and r.json()["error_code"] == "SESSION_NOT_FOUND"


def test_task_list_filters_and_newest_first(api: Api) -> None:
    s1, s2 = unique("g1"), unique("g2")
    start = now_iso()
    api.write(sessions=[session(s1), session(s2)], flush=False)
    first = [task(f"{s1}-a{i}", s1, status="completed") for i in range(3)]
    second = [task(f"{s2}-b{i}", s2, status="pending") for i in range(2)] + [task(f"{s1}-c", s1, status="pending")]
    api.write(tasks=first, flush=False)
    api.write(tasks=second)
    window = {"from_date": start, "to_date": now_iso()}
    body = api.ok("/tasks", **window)
    assert set(body) == PAGE_FIELDS
    # Newest first; one request shares one created_at, and ties go by task_id descending.
    expected = sorted((t["task_id"] for t in second), reverse=True) + sorted((t["task_id"] for t in first), reverse=True)
    assert [t["task_id"] for t in body["items"]] == expected
    assert [t["task_id"] for t in api.ok("/tasks", session_id=s1, **window)["items"]] == [
        f"{s1}-c", f"{s1}-a2", f"{s1}-a1", f"{s1}-a0"]
    assert api.ok("/tasks", session_id=s1, status="pending")["total"] == 1
    assert api.ok("/tasks", status="completed", **window)["total"] == 3
    assert api.ok("/tasks", session_id=s2)["total"] == 2
    assert api.ok("/tasks", session_id="no-such-session")["total"] == 0
    paged = api.ok("/tasks", page=2, page_size=4, **window)
    assert [t["task_id"] for t in paged["items"]] == expected[4:]
    assert (paged["total"], paged["total_pages"], paged["next_cursor"]) == (6, 2, None)


def test_every_task_read_returns_the_stored_values_exactly(api: Api) -> None:
    """Single task, both lists and restore read tasks the same way (on MariaDB as
    one JSON array per row): control characters, quotes, backslashes, JSON-looking
    text, big integers and the edges of confidence come back as written."""
    sid = unique("exact")
    hostile = NASTY + " nul \x00 bell \x07 unit-sep \x1f line-sep \u2028 json {\"a\": [1]} \\u0041 end"
    written = [task(f"{sid}-{i}", sid, source_text=hostile, target_text=text, context=None, confidence=conf,
                    row_index=row, retry_count=9_007_199_254_740_993, duration_ms=None)
               for i, (text, conf, row) in enumerate([(hostile, 1.0, 2**40), ("", 0.0, 0), (None, None, 5)])]
    api.write(sessions=[session(sid, status="processing")], tasks=written)
    single = [api.ok(f"/tasks/{t['task_id']}") for t in written]
    in_session = api.ok(f"/sessions/{sid}/tasks", page_size=10)["items"]
    in_list = api.ok("/tasks", session_id=sid, page_size=10)["items"]
    restored = api.service.http.post(f"/api/v1/translation/recovery/restore/{sid}").json()["tasks"]
    for reads in (in_session, in_list, restored):
        assert sorted(reads, key=lambda t: t["task_id"]) == single
    for read, sent in zip(single, written, strict=True):
        for field in ("source_text", "target_text", "context", "confidence", "row_index", "retry_count",
                      "duration_ms"):
            assert read[field] == sent[field], field
    assert [type(t["confidence"]) for t in single] == [float, float, type(None)]
