"""The archive end to end, on each sink: finished sessions move out of the hot
tables into archive objects and back, every record byte-identical both ways
(the API's JSON and the stored rows); what is not due stays; a restored
session is not archived again at once; a session written again after it was
archived is archived again whole; the list, the summary and the errors answer
as API.md says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from testkit.service import Service, session, sink_rows, task

ARCHIVE = "/api/v1/translation/archive"
SESSIONS = "/api/v1/translation/sessions"
NOW = datetime.now(UTC).replace(microsecond=0)


def ago(days: float, micro: int = 0) -> str:
    return (NOW - timedelta(days=days) + timedelta(microseconds=micro)).isoformat().replace("+00:00", "Z")


def fill(service: Service, session_id: str, status: str, days_ago: float, tasks: int) -> None:
    body = session(session_id, status=status, updated_at=ago(days_ago), total_tasks=tasks, completed_tasks=tasks,
                   game_info={"名": "游戏", "n": [1, 2.5, None]}, metadata={"k": "v"})
    assert service.post_sessions([body]).status_code == 202
    rows = [task(f"{session_id}-t{i:03d}", session_id, row_index=i, column_name="BC"[i % 2],
                 target_text=f"译文 {i} ✓", status="completed", confidence=0.1234 + i / 1000,
                 context=None if i % 3 else "ctx", updated_at=ago(days_ago, i), duration_ms=i * 7,
                 start_time=ago(days_ago + 1), end_time=ago(days_ago, 5))
            for i in range(tasks)]
    for start in range(0, len(rows), 500):
        assert service.post_tasks(rows[start:start + 500]).status_code == 202


def hot_view(service: Service, session_id: str) -> tuple[bytes, list[bytes]]:
    """The session's detail (without its clock-dependent field) and every task as the API renders them."""
    detail = service.http.get(f"{SESSIONS}/{session_id}").json()
    detail.pop("estimated_completion")
    tasks: list[bytes] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"page_size": 100, **({"cursor": cursor} if cursor else {})}
        page = service.http.get(f"{SESSIONS}/{session_id}/tasks", params=params).json()
        tasks += [canonical(t) for t in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            return canonical(detail), tasks


def canonical(value: Any) -> bytes:
    import msgspec
    return msgspec.json.encode(value)


def archived_view(service: Service, session_id: str) -> tuple[bytes, list[bytes], dict]:
    answer = service.http.get(f"{ARCHIVE}/sessions/{session_id}")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    body["session"].pop("estimated_completion")
    return canonical(body["session"]), [canonical(t) for t in body["tasks"]], body


def stored(service: Service, table: str, session_id: str) -> list[dict]:
    key = "session_id"
    return sorted((r for r in sink_rows(service.sink_url, table) if r[key] == session_id),
                  key=lambda r: str(r.get("task_id", "")))


def run_archive(service: Service, after_days: float) -> dict:
    answer = service.http.post(f"{ARCHIVE}/run", json={"after_days": after_days})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_archive_round_trip_is_byte_identical(service: Service) -> None:
    fill(service, "old-done", "completed", 200, 120)
    fill(service, "old-failed", "failed", 100, 30)
    fill(service, "new-done", "completed", 10, 5)
    fill(service, "old-open", "processing", 300, 5)
    assert service.flush().status_code == 200
    before = {sid: hot_view(service, sid) for sid in ("old-done", "old-failed")}
    rows_before = {sid: (stored(service, "translation_sessions", sid), stored(service, "translation_tasks", sid))
                   for sid in before}

    result = run_archive(service, 90)
    assert (result["status"], result["sessions"], result["tasks"], result["more"]) == ("archived", 2, 150, False)
    assert result["objects"] == 2  # two months
    for sid, (detail, tasks) in before.items():
        gone = service.http.get(f"{SESSIONS}/{sid}")
        assert gone.status_code == 404 and gone.json()["archived"] is True
        assert stored(service, "translation_tasks", sid) == [] and stored(service, "translation_sessions", sid) == []
        archived_detail, archived_tasks, body = archived_view(service, sid)
        assert archived_detail == detail
        assert archived_tasks == tasks  # every task, in the session's order, byte for byte
        assert body["archived_at"].endswith("Z")
    assert service.http.get(f"{SESSIONS}/new-done").status_code == 200
    assert service.http.get(f"{SESSIONS}/old-open").status_code == 200
    unknown = service.http.get(f"{SESSIONS}/never")
    assert unknown.status_code == 404 and "archived" not in unknown.json()

    listed = service.http.get(f"{ARCHIVE}/sessions").json()
    assert [i["session_id"] for i in listed["items"]] == ["old-failed", "old-done"]  # newest created first
    assert listed["next_cursor"] is None
    assert {i["status"] for i in listed["items"]} == {"completed", "failed"}
    first = service.http.get(f"{ARCHIVE}/sessions", params={"limit": 1}).json()
    second = service.http.get(f"{ARCHIVE}/sessions", params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert [i["session_id"] for i in first["items"] + second["items"]] == ["old-failed", "old-done"]
    assert second["next_cursor"] is None
    only_failed = service.http.get(f"{ARCHIVE}/sessions", params={"status": "failed"}).json()
    assert [i["session_id"] for i in only_failed["items"]] == ["old-failed"]
    summary = service.http.get(ARCHIVE).json()
    assert sum(m["sessions"] for m in summary["sessions"]) == 2
    assert sum(m["tasks"] for m in summary["sessions"]) == 150
    assert {m["month"] for m in summary["sessions"]} == {ago(200)[:7], ago(100)[:7]}

    restored = service.http.post(f"{ARCHIVE}/sessions/old-done/restore")
    assert restored.status_code == 200, restored.text
    assert restored.json() == {"status": "restored", "session_id": "old-done", "tasks": 120}
    assert hot_view(service, "old-done") == before["old-done"]
    assert (stored(service, "translation_sessions", "old-done"), stored(service, "translation_tasks", "old-done")) \
        == rows_before["old-done"]  # created_at and updated_at as they were
    missing = service.http.get(f"{ARCHIVE}/sessions/old-done")
    assert missing.status_code == 404 and missing.json()["error_code"] == "ARCHIVED_SESSION_NOT_FOUND"
    again = service.http.post(f"{ARCHIVE}/sessions/old-done/restore")
    assert again.status_code == 404 and again.json()["error_code"] == "ARCHIVED_SESSION_NOT_FOUND"
    # Restored: kept hot for after_days, not archived by the next run.
    assert run_archive(service, 90)["sessions"] == 0
    assert service.http.get(f"{SESSIONS}/old-done").status_code == 200


def test_a_session_written_after_it_was_archived_is_archived_again_whole(service: Service) -> None:
    fill(service, "late", "completed", 200, 40)
    assert service.flush().status_code == 200
    _, tasks_before, _ = (*hot_view(service, "late"), None)
    assert run_archive(service, 90)["sessions"] == 1
    # A late status write recreates the session in the hot tables (its tasks stay archived).
    assert service.post_sessions([session("late", status="failed", updated_at=ago(150), total_tasks=40,
                                          completed_tasks=40)]).status_code == 202
    assert service.flush().status_code == 200
    assert service.http.get(f"{SESSIONS}/late").json()["status"] == "failed"
    result = run_archive(service, 90)
    assert (result["sessions"], result["tasks"]) == (1, 40)
    detail, tasks, _ = archived_view(service, "late")
    assert b'"status":"failed"' in detail
    assert tasks == tasks_before


def test_bad_requests_change_nothing(service: Service) -> None:
    for params in ({"status": "nope"}, {"limit": "0"}, {"from_date": "yesterday"}, {"cursor": "garbage"}):
        answer = service.http.get(f"{ARCHIVE}/sessions", params=params)
        assert answer.status_code == 422, (params, answer.text)
    assert service.http.post(f"{ARCHIVE}/run", json={"after_days": -1}).status_code == 422
    assert service.http.post(f"{ARCHIVE}/run", json={"days": 1}).status_code == 422
    unknown = service.http.post(f"{ARCHIVE}/sessions/{'x' * 37}/restore")
    assert unknown.status_code == 404 and unknown.json()["error_code"] == "ARCHIVED_SESSION_NOT_FOUND"


@pytest.mark.parametrize("sink_url", ["sqlite"], indirect=True)
def test_scheduled_archiving_moves_due_sessions_in_bounded_runs(service_factory, sink_url: str) -> None:
    service = service_factory(sink_url, retention_interval=1.0,
                              extra_toml="[archive]\nafter_days = 30\ntasks_per_run = 50\n")
    for n in range(6):
        fill(service, f"s{n}", "completed", 40 + n, 20)
    fill(service, "recent", "completed", 5, 20)
    assert service.flush().status_code == 200
    from testkit.service import wait_for
    wait_for(lambda: len(service.http.get(f"{ARCHIVE}/sessions").json()["items"]) == 6, 60, "6 sessions archived")
    assert service.http.get(f"{SESSIONS}/recent").status_code == 200
    assert len(stored(service, "translation_tasks", "recent")) == 20
    assert sum(1 for r in sink_rows(service.sink_url, "translation_tasks")) == 20
    metrics = service.http.get("/metrics").text
    assert 'persistence_archived_rows_total{table="tasks"} 120.0' in metrics
