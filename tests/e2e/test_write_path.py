"""The real `persistence-service run` against a real sink: POST, flush, read
the rows back as an operator would."""

from __future__ import annotations

import json

import pytest

from testkit.service import session, sink_rows, task, wait_for


def _by_key(rows: list[dict], key: str) -> dict[str, dict]:
    return {r[key]: r for r in rows}


def test_batches_reach_the_database(service) -> None:
    r = service.post_sessions([session("s-1", game_info={"game_name": "星之海", "target_language": "en"},
                                       total_tasks=2, completed_tasks=1)])
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "accepted" and r.json()["count"] == 1
    assert r.json()["timestamp"].endswith("Z")
    tasks = [task("t-1", "s-1", confidence=0.98765, target_text="Hello", start_time="2025-09-30T10:15:30+08:00",
                  duration_ms=1200, status="completed"),
             task("t-2", "s-1", row_index=2, source_text="x" * 20000)]
    assert service.post_tasks(tasks).status_code == 202

    flushed = service.flush()
    assert flushed.status_code == 200, flushed.text
    assert flushed.json()["status"] == "flushed"
    assert flushed.json()["sessions_written"] == 1 and flushed.json()["tasks_written"] == 2

    stored = _by_key(sink_rows(service.sink_url, "translation_tasks"), "task_id")
    assert set(stored) == {"t-1", "t-2"}
    t1 = stored["t-1"]
    assert t1["source_text"] == "你好, world" and t1["target_text"] == "Hello"
    assert float(t1["confidence"]) == pytest.approx(0.9877)  # stored with 4 decimals
    assert str(t1["start_time"]).startswith("2025-09-30 02:15:30")  # converted to UTC
    assert t1["duration_ms"] == 1200 and t1["status"] == "completed"
    assert len(stored["t-2"]["source_text"]) == 20000
    (s1,) = sink_rows(service.sink_url, "translation_sessions")
    assert json.loads(s1["game_info"]) == {"game_name": "星之海", "target_language": "en"}
    assert (s1["total_tasks"], s1["completed_tasks"], s1["metadata"]) == (2, 1, None)


def test_later_write_replaces_the_whole_record(service) -> None:
    service.post_sessions([session("s-1")])
    service.post_tasks([task("t-1", "s-1", target_text="draft", confidence=0.5, retry_count=3)])
    assert service.flush().status_code == 200
    service.post_tasks([task("t-1", "s-1", status="processing")])
    assert service.flush().status_code == 200
    (row,) = sink_rows(service.sink_url, "translation_tasks")
    assert row["status"] == "processing"
    assert (row["target_text"], row["confidence"], row["retry_count"]) == (None, None, 0)


def test_stale_version_never_overwrites_a_newer_one(service) -> None:
    service.post_sessions([session("s-1")])
    newer = task("t-1", "s-1", status="completed", updated_at="2025-10-01T12:00:00Z")
    assert service.post_tasks([newer]).status_code == 202
    assert service.flush().status_code == 200
    # Arrives later, in another batch, but carries an older version.
    stale = task("t-1", "s-1", status="pending", updated_at="2025-10-01T11:59:59Z")
    assert service.post_tasks([stale]).status_code == 202
    # Same batch: the highest version wins whatever the order inside the batch.
    service.post_tasks([task("t-2", "s-1", status="failed", updated_at="2025-10-02T00:00:02Z"),
                        task("t-2", "s-1", status="pending", updated_at="2025-10-02T00:00:01Z")])
    assert service.flush().status_code == 200
    rows = _by_key(sink_rows(service.sink_url, "translation_tasks"), "task_id")
    assert rows["t-1"]["status"] == "completed"
    assert str(rows["t-1"]["updated_at"]).startswith("2025-10-01 12:00:00")
    assert rows["t-2"]["status"] == "failed"


def test_without_updated_at_the_later_acknowledged_write_wins(service) -> None:
    service.post_sessions([session("s-1")])
    for status in ("pending", "processing", "completed"):
        assert service.post_tasks([task("t-1", "s-1", status=status)]).status_code == 202
    assert service.flush().status_code == 200
    (row,) = sink_rows(service.sink_url, "translation_tasks")
    assert row["status"] == "completed"
    assert row["created_at"] < row["updated_at"]  # created when first accepted, versioned by the last


def test_keys_differing_by_case_or_trailing_space_are_distinct(service) -> None:
    service.post_sessions([session("s-1")])
    service.post_tasks([task("abc", "s-1"), task("ABC", "s-1"), task("abc ", "s-1")])
    assert service.flush().status_code == 200
    assert sorted(r["task_id"] for r in sink_rows(service.sink_url, "translation_tasks")) == ["ABC", "abc", "abc "]


def test_orphan_task_is_held_until_its_session_arrives(service) -> None:
    assert service.post_tasks([task("t-1", "late-session")]).status_code == 202
    flushed = service.flush()
    assert flushed.status_code == 200
    # The flush says what happened: nothing written, one task held for its session.
    assert (flushed.json()["tasks_written"], flushed.json()["tasks_held"]) == (0, 1), flushed.text
    assert "held" in flushed.json()["detail"]
    assert sink_rows(service.sink_url, "translation_tasks") == []
    assert service.http.get("/health").json()["buffer"]["held_orphans"] == 1
    service.post_sessions([session("late-session")])
    assert service.flush().status_code == 200
    wait_for(lambda: sink_rows(service.sink_url, "translation_tasks"), 15, "the held task to be written")
    wait_for(lambda: service.http.get("/health").json()["buffer"]["held_orphans"] == 0, 10, "held to empty")


def test_orphan_is_dead_lettered_after_the_grace(service_factory, tmp_path) -> None:
    svc = service_factory(f"sqlite:///{tmp_path / 'store.db'}", orphan_grace=0.5)
    assert svc.post_tasks([task("t-1", "never-created")]).status_code == 202
    assert svc.flush().status_code == 200
    health = wait_for(lambda: (h := svc.http.get("/health").json())["buffer"]["dead_letters"] == 1 and h,
                      20, "the orphan to be dead-lettered")
    assert health["buffer"]["held_orphans"] == 0
    assert sink_rows(svc.sink_url, "translation_tasks") == []


def test_health_reports_the_spool(service) -> None:
    body = wait_for(lambda: (b := service.http.get("/health").json())["status"] == "healthy" and b,
                    10, "the flusher to report a healthy database")
    assert body["database"] == "healthy"
    assert set(body["buffer"]) >= {"sessions_count", "tasks_count", "total_count", "capacity",
                                   "usage_percent", "last_flush"}
    assert body["version"] and body["uptime_seconds"] >= 0
    query_port = service.http.get(f"http://127.0.0.1:{service.query_port}/health")
    assert query_port.status_code == 200


def test_unknown_path_and_wrong_method_are_json_errors(service) -> None:
    r = service.http.get("/no/such/path")
    assert r.status_code == 404 and r.json()["error_code"] == "NOT_FOUND"
    r = service.http.get("/api/v1/translation/tasks/batch")
    assert r.status_code == 405 and r.json()["error_code"] == "METHOD_NOT_ALLOWED"
