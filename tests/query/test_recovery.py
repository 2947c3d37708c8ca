"""Recovery: incomplete sessions, the streamed restore, and recovery status."""

from __future__ import annotations

import json
from collections import Counter

from testkit.service import session, sink_rows, task
from tests.query.support import BASE, DETAIL_FIELDS, SUMMARY_FIELDS, TASK_FIELDS, Api, parse_iso, unique

OPEN = ("pending", "processing")


def _restore(api: Api, session_id: str):
    return api.query.post(f"{BASE}/recovery/restore/{session_id}")


def test_restore_returns_exactly_the_open_tasks_of_the_session(api: Api) -> None:
    sid, other = unique("rs"), unique("ro")
    statuses = ["pending", "processing", "completed", "failed"]
    # More than two chunks of open tasks (RESTORE_CHUNK_ROWS = 1000), across both open statuses.
    tasks = [task(f"{sid}-{i:05d}", sid, status=statuses[i % 4] if i < 600 else OPEN[i % 2],
                  row_index=i, source_text=f"行 {i}") for i in range(2600)]
    decoys = [task(f"{other}-{i}", other, status=OPEN[i % 2]) for i in range(50)]
    api.write(sessions=[session(sid, total_tasks=2600, completed_tasks=150, game_info={"g": 1}),
                        session(other)], tasks=tasks + decoys)
    r = _restore(api, sid)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"] == "application/json"
    assert "content-length" not in r.headers  # streamed, not built in memory
    body = json.loads(r.content)
    assert set(body) == {"session_id", "session", "tasks_count", "tasks", "restored_at"}
    assert body["session_id"] == sid
    assert set(body["session"]) == DETAIL_FIELDS and body["session"]["game_info"] == {"g": 1}
    expected = {t["task_id"] for t in tasks if t["status"] in OPEN}
    got = [t["task_id"] for t in body["tasks"]]
    assert len(got) == len(set(got)) == body["tasks_count"] == len(expected) == 2300
    assert set(got) == expected
    assert all(set(t) == TASK_FIELDS and t["session_id"] == sid for t in body["tasks"])
    sample = next(t for t in body["tasks"] if t["task_id"] == f"{sid}-00001")
    assert (sample["status"], sample["row_index"], sample["source_text"]) == ("processing", 1, "行 1")
    parse_iso(body["restored_at"])


def test_restore_of_a_session_without_open_tasks(api: Api) -> None:
    sid = unique("rd")
    api.write(sessions=[session(sid, status="completed")], tasks=[task(f"{sid}-1", sid, status="completed")])
    body = _restore(api, sid).json()
    assert (body["tasks"], body["tasks_count"], body["session"]["status"]) == ([], 0, "completed")


def test_restore_with_processing_tasks_only(api: Api) -> None:
    sid = unique("rp")
    api.write(sessions=[session(sid)], tasks=[task(f"{sid}-{i}", sid, status="processing") for i in range(3)])
    body = _restore(api, sid).json()
    assert sorted(t["task_id"] for t in body["tasks"]) == [f"{sid}-{i}" for i in range(3)]
    assert body["tasks_count"] == 3


def test_restore_of_an_unknown_session_is_404(api: Api) -> None:
    r = _restore(api, "no-such-session")
    assert r.status_code == 404
    assert r.json() == {"detail": "Session not found", "error_code": "SESSION_NOT_FOUND",
                        "session_id": "no-such-session", "errors": []}


def test_incomplete_sessions_are_pending_or_processing_newest_first(api: Api) -> None:
    ids = {status: unique(status[:4]) for status in ("pending", "processing", "completed", "failed", "cancelled")}
    for status, sid in ids.items():
        api.write(sessions=[session(sid, status=status)], flush=False)
    assert api.service.flush().status_code == 200
    body = api.ok("/recovery/incomplete-sessions")
    assert set(body) == {"count", "sessions"} and body["count"] == len(body["sessions"])
    listed = [s["session_id"] for s in body["sessions"]]
    assert ids["pending"] in listed and ids["processing"] in listed
    assert not {ids["completed"], ids["failed"], ids["cancelled"]} & set(listed)
    assert all(set(s) == SUMMARY_FIELDS and s["status"] in OPEN for s in body["sessions"])
    keys = [(s["created_at"], s["session_id"]) for s in body["sessions"]]
    assert keys == sorted(keys, reverse=True)
    assert listed.index(ids["processing"]) < listed.index(ids["pending"])  # written after it


def test_recovery_status_counts_what_restore_would_find(api: Api) -> None:
    sid = unique("rc")
    api.write(sessions=[session(sid, status="pending")],
              tasks=[task(f"{sid}-{i}", sid, status=["pending", "processing", "failed"][i % 3]) for i in range(9)])
    body = api.ok("/recovery/status")
    sessions = {r["session_id"]: r["status"] for r in sink_rows(api.service.sink_url, "translation_sessions",
                                                                "session_id, status")}
    open_sessions = {s for s, status in sessions.items() if status in OPEN}
    tasks = Counter(r["status"] for r in sink_rows(api.service.sink_url, "translation_tasks", "session_id, status")
                    if r["session_id"] in open_sessions and r["status"] in OPEN)
    assert body["incomplete_sessions"] == len(open_sessions)
    assert body["sessions_by_status"] == {s: sum(1 for v in sessions.values() if v == s) for s in OPEN}
    assert body["tasks_by_status"] == {s: tasks[s] for s in OPEN}
    assert body["open_tasks"] == sum(tasks.values())
    parse_iso(body["checked_at"])
