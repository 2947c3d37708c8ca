"""DELETE, PATCH status and cleanup go through the spool: they are ordered
after every write acknowledged before them."""

from __future__ import annotations

from testkit.service import session, sink_rows, task, wait_for

BASE = "/api/v1/translation/sessions"


def _q(service, method: str, path: str, **kwargs):
    # Management is the query process's (port 8002).
    return service.http.request(method, f"http://127.0.0.1:{service.query_port}{path}", **kwargs)


def test_delete_right_after_writes_leaves_nothing(service) -> None:
    # No flush in between: the writes are still in the spool when the delete arrives.
    assert service.post_sessions([session("s-1"), session("s-keep")]).status_code == 202
    assert service.post_tasks([task(f"t-{i}", "s-1") for i in range(300)]).status_code == 202
    assert service.post_tasks([task("k-1", "s-keep")]).status_code == 202
    r = _q(service, "DELETE", f"{BASE}/s-1")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "deleted", "session_id": "s-1", "deleted_tasks": 300}
    assert service.flush().status_code == 200
    assert {r["session_id"] for r in sink_rows(service.sink_url, "translation_sessions")} == {"s-keep"}
    assert {r["task_id"] for r in sink_rows(service.sink_url, "translation_tasks")} == {"k-1"}


def test_writes_after_a_delete_are_kept(service) -> None:
    service.post_sessions([session("s-1")])
    assert _q(service, "DELETE", f"{BASE}/s-1").status_code == 200
    service.post_sessions([session("s-1", status="pending")])
    assert service.flush().status_code == 200
    (row,) = sink_rows(service.sink_url, "translation_sessions")
    assert row["status"] == "pending"


def test_delete_unknown_session_is_404(service) -> None:
    r = _q(service, "DELETE", f"{BASE}/nope")
    assert r.status_code == 404
    assert r.json()["error_code"] == "SESSION_NOT_FOUND" and r.json()["session_id"] == "nope"
    assert r.json()["detail"] == "Session not found"


def test_orphans_of_a_deleted_session_are_dropped(service) -> None:
    service.post_sessions([session("s-1")])
    assert service.flush().status_code == 200
    assert _q(service, "DELETE", f"{BASE}/s-1").status_code == 200
    # A task acknowledged after the delete names a session that no longer exists: it is held.
    service.post_tasks([task("t-late", "s-1")])
    assert service.flush().status_code == 200
    assert service.http.get("/health").json()["buffer"]["held_orphans"] == 1
    assert sink_rows(service.sink_url, "translation_tasks") == []


def test_patch_status_changes_only_the_status(service) -> None:
    service.post_sessions([session("s-1", total_tasks=5, completed_tasks=2)])
    r = _q(service, "PATCH", f"{BASE}/s-1/status", json={"status": "completed"})
    assert r.status_code == 200, r.text
    (row,) = sink_rows(service.sink_url, "translation_sessions")
    assert row["status"] == "completed" and (row["total_tasks"], row["completed_tasks"]) == (5, 2)
    bad = _q(service, "PATCH", f"{BASE}/s-1/status", json={"status": "finished"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "status"
    assert _q(service, "PATCH", f"{BASE}/nope/status", json={"status": "failed"}).status_code == 404


def test_cleanup_dry_run_then_real(service) -> None:
    old = "2020-01-01T00:00:00Z"
    service.post_sessions([session("old-done", status="completed", updated_at=old),
                           session("old-failed", status="failed", updated_at=old),
                           session("old-open", status="processing", updated_at=old),
                           session("new-done", status="completed")])
    service.post_tasks([task("t-1", "old-done", updated_at=old), task("t-2", "old-open", updated_at=old)])
    r = _q(service, "POST", f"{BASE}/cleanup", json={"dry_run": True})
    assert r.json() == {"status": "completed", "deleted_sessions": 2, "deleted_tasks": 1, "dry_run": True}
    assert len(sink_rows(service.sink_url, "translation_sessions")) == 4
    r = _q(service, "POST", f"{BASE}/cleanup")
    assert r.json() == {"status": "completed", "deleted_sessions": 2, "deleted_tasks": 1, "dry_run": False}
    assert {r["session_id"] for r in sink_rows(service.sink_url, "translation_sessions")} == {"old-open", "new-done"}
    bad = _q(service, "POST", f"{BASE}/cleanup", json={"completed_days": -1})
    assert bad.status_code == 422


def test_scheduled_retention(service_factory, tmp_path) -> None:
    svc = service_factory(f"sqlite:///{tmp_path / 'store.db'}", retention_interval=1.0)
    svc.post_sessions([session("old-done", status="completed", updated_at="2020-01-01T00:00:00Z"),
                       session("fresh", status="completed")])
    assert svc.flush().status_code == 200
    wait_for(lambda: [r["session_id"] for r in sink_rows(svc.sink_url, "translation_sessions")] == ["fresh"],
             15, "the scheduled cleanup to delete the old session")


def test_patch_status_says_when_a_newer_write_keeps_the_old_status(service) -> None:
    # The stored record's version (its updated_at) is newer than the moment the PATCH is applied.
    service.post_sessions([session("s-1", status="processing", updated_at="2999-01-01T00:00:00Z")])
    r = _q(service, "PATCH", f"{BASE}/s-1/status", json={"status": "completed"})
    assert r.status_code == 409, r.text
    assert r.json()["error_code"] == "SUPERSEDED"
    assert (r.json()["requested_status"], r.json()["current_status"]) == ("completed", "processing")
    assert sink_rows(service.sink_url, "translation_sessions")[0]["status"] == "processing"


def test_management_bodies_name_the_bad_field_and_change_nothing(service) -> None:
    old = "2020-01-01T00:00:00Z"
    service.post_sessions([session("old-done", status="completed", updated_at=old)])
    assert service.flush().status_code == 200
    missing = _q(service, "PATCH", f"{BASE}/old-done/status", json={})
    assert missing.status_code == 422
    assert missing.json()["errors"] == [{"field": "status", "message": "required field is missing"}]
    for body in ({"completed_days": 1.5}, {"completed_days": "90"}, {"failed_days": True}):
        bad = _q(service, "POST", f"{BASE}/cleanup", json=body)
        assert bad.status_code == 422, (body, bad.text)
        assert bad.json()["errors"][0]["field"] == next(iter(body))
    assert [r["session_id"] for r in sink_rows(service.sink_url, "translation_sessions")] == ["old-done"]
    assert sink_rows(service.sink_url, "translation_sessions")[0]["status"] == "completed"


def test_cleanup_with_more_days_than_there_have_been_deletes_nothing(service) -> None:
    service.post_sessions([session("old-done", status="completed", updated_at="0001-01-01T00:00:00Z")])
    r = _q(service, "POST", f"{BASE}/cleanup", json={"completed_days": 3_650_000, "failed_days": 3_649_999})
    assert r.status_code == 200, r.text
    assert (r.json()["deleted_sessions"], r.json()["deleted_tasks"]) == (0, 0)
    assert service.http.get("/api/v1/system/dead-letters").json()["total"] == 0
