"""persistence_client against the real service: every method, as a backend
would call it, with typed answers and errors that carry the service's
error_code, errors and request id."""

from __future__ import annotations

import io
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from persistence_api.audit import AuditEvent
from persistence_api.translation import CleanupResult, Deleted, SessionDetail, StatusUpdated, TaskView
from persistence_api.users import SessionCreate, UserCreate, UserPatch
from persistence_client import (Conflict, NotFound, PersistenceClient, Rejected, Unauthorized, ValidationFailed)
from persistence_client.streams import ArrayItems
from testkit.service import Service
from tests.client.conftest import a_session, a_task, base_url, new_id


def test_writes_are_batched_acknowledged_and_read_back_typed(client: PersistenceClient) -> None:
    sid = new_id("s")
    client.sessions.put(a_session(sid, total_tasks=2500, game_info={"title": "游戏", "nested": {"a": [1, 2]}}))
    for row in range(2500):
        client.tasks.put(a_task(f"{sid}-t{row}", sid, row, "completed" if row % 5 == 0 else "pending"))
    client.tasks.put({"task_id": f"{sid}-dict", "session_id": sid, "batch_id": "b", "sheet_name": "S",
                      "row_index": 0, "column_name": "A", "source_text": "a dict works too", "status": "pending"})
    result = client.flush(stored=True)
    assert result is not None and result.status == "flushed"
    stats = client.stats
    assert stats.put == stats.acknowledged == 2502 and stats.queued == 0 and stats.rejected == 0
    assert stats.requests <= 5  # 1000-record batches, not one request per record

    detail = client.sessions.get(sid)
    assert isinstance(detail, SessionDetail)
    assert detail.total_tasks == 2500 and detail.game_info == {"title": "游戏", "nested": {"a": [1, 2]}}
    task = client.tasks.get(f"{sid}-t7")
    assert isinstance(task, TaskView) and task.source_text == 'source 7: "quoted" [x] {y} 翻译\\n'
    # Lists follow next_cursor to the end, each row once.
    walked = [t.task_id for t in client.sessions.tasks(sid, page_size=100)]
    assert len(walked) == len(set(walked)) == 2501
    assert {t.task_id for t in client.tasks.list(session_id=sid, status="completed", page_size=37)} == {
        f"{sid}-t{row}" for row in range(0, 2500, 5)}
    assert sid in {s.session_id for s in client.sessions.list(status="processing", page_size=10)}


def test_a_later_put_of_a_key_wins(client: PersistenceClient) -> None:
    sid = new_id("s")
    client.sessions.put(a_session(sid))
    for status in ("pending", "processing", "completed"):
        client.tasks.put(a_task(f"{sid}-t", sid, 1, status))
        client.flush()  # separate batches, in put order
    client.tasks.put(a_task(f"{sid}-u", sid, 2, "pending"))
    client.tasks.put(a_task(f"{sid}-u", sid, 2, "failed"))  # one batch: the later item wins
    client.flush(stored=True)
    assert client.tasks.get(f"{sid}-t").status == "completed"
    assert client.tasks.get(f"{sid}-u").status == "failed"


def test_restore_streams_the_open_tasks(client: PersistenceClient) -> None:
    sid = new_id("s")
    client.sessions.put(a_session(sid, total_tasks=3000))
    for row in range(3000):
        client.tasks.put(a_task(f"{sid}-t{row:04d}", sid, row, "completed" if row % 3 == 0 else "processing"))
    client.flush(stored=True)
    with client.recovery.restore(sid) as restored:
        assert restored.session is not None and restored.session.session_id == sid
        assert restored.tasks_count is None  # known once every task has been read
        ids = [task.task_id for task in restored]
    assert restored.tasks_count == len(ids) == 2000
    assert set(ids) == {f"{sid}-t{row:04d}" for row in range(3000) if row % 3}
    assert restored.restored_at is not None and restored.restored_at.endswith("Z")
    assert sid in {s.session_id for s in client.recovery.incomplete_sessions().sessions}
    assert client.recovery.status().open_tasks >= 2000
    with pytest.raises(NotFound) as missing:
        with client.recovery.restore(new_id("nope")):
            pass
    assert missing.value.error_code == "SESSION_NOT_FOUND"


def test_the_array_scanner_survives_any_chunking() -> None:
    tasks = [{"task_id": f"t{i}", "text": s} for i, s in enumerate(
        ['plain', 'a "quote" and \\ backslash', ']}{[', '\\"]', '翻译 "}', '', '\\\\'])]
    document = json.dumps({"session_id": "x", "session": {"tasks": [1], "k": "[\"tasks\":["},
                           "tasks": tasks, "tasks_count": 7, "restored_at": "z"}).encode()
    for size in (1, 2, 3, 7, 64, len(document)):
        scanner = ArrayItems("tasks")
        items = []
        for at in range(0, len(document), size):
            items += scanner.feed(document[at:at + size])
        assert [json.loads(item) for item in items] == tasks, size
        assert json.loads(bytes(scanner.rest))["tasks"] == [] and json.loads(bytes(scanner.rest))["tasks_count"] == 7


def test_management_answers_are_typed(client: PersistenceClient) -> None:
    sid = new_id("s")
    client.sessions.put(a_session(sid))
    client.tasks.put(a_task(f"{sid}-t", sid, 1))
    client.flush()
    assert client.sessions.set_status(sid, "completed") == StatusUpdated(sid, "completed")
    assert client.sessions.get(sid).status == "completed"
    assert client.sessions.delete(sid) == Deleted(sid, 1)
    with pytest.raises(NotFound) as gone:
        client.sessions.get(sid)
    assert gone.value.status == 404 and gone.value.error_code == "SESSION_NOT_FOUND"
    assert gone.value.request_id and gone.value.body["session_id"] == sid
    dry = client.sessions.cleanup(completed_days=0, failed_days=0, dry_run=True)
    assert isinstance(dry, CleanupResult) and dry.dry_run is True
    assert client.health().status == "healthy"
    assert client.service_stats().tasks.total >= 1


def test_records_the_service_refuses_are_reported_and_the_rest_stored(shared_service: Service) -> None:
    refused: list[Rejected] = []
    client = PersistenceClient(base_url(shared_service), flush_interval=10, on_rejected=refused.append)
    sid = new_id("s")
    client.sessions.put(a_session(sid))
    for row in range(10):
        # A Struct is not validated when built: the service's 422 is what finds these.
        status = "bogus" if row in (3, 7) else "pending"
        client.tasks.put(a_task(f"{sid}-t{row}", sid, row, status))
    client.flush(stored=True)
    assert [r.kind for r in refused] == ["tasks"]
    assert sorted(r["task_id"] for r in refused[0].records) == [f"{sid}-t3", f"{sid}-t7"]
    assert isinstance(refused[0].error, ValidationFailed)
    assert {p.field for p in refused[0].problems} == {"tasks[3].status", "tasks[7].status"}
    assert client.stats.rejected == 2 and client.stats.acknowledged == 9
    assert {t.task_id for t in client.sessions.tasks(sid)} == {f"{sid}-t{r}" for r in range(10) if r not in (3, 7)}
    client.close()


def test_files_up_and_down_streamed(client: PersistenceClient, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 20_000)  # 5 MB from a path, streamed
    owner = new_id("o")
    stored = client.files.upload(big, "大 file.bin", session_id="s-1", owner_id=owner, tags=["a", "b c"])
    assert stored.size == big.stat().st_size and stored.filename == "大 file.bin" and stored.tags == ["a", "b c"]
    assert client.files.get(stored.file_id) == stored
    out = tmp_path / "out.bin"
    assert client.files.download(stored.file_id, out) == stored.size and out.read_bytes() == big.read_bytes()
    with client.files.open(stored.file_id, byte_range=(10, 19)) as chunks:
        assert b"".join(chunks) == big.read_bytes()[10:20]
    from_file = client.files.upload(io.BytesIO(b"from a file object"), "f.txt", "text/plain", owner_id=owner)
    from_chunks = client.files.upload(iter([b"from ", b"chunks"]), "c.txt", "text/plain", owner_id=owner)
    assert from_chunks.size == 11 and from_file.size == 18
    url = client.files.presign(stored.file_id, expires_in=60)
    assert httpx.get(url.url).content == big.read_bytes()  # no API key needed
    direct = client.files.upload_presigned(b"straight to the store", "p.txt", "text/plain", owner_id=owner)
    assert direct.size == 21
    assert [f.file_id for f in client.files.list(owner_id=owner, limit=1)] == [
        direct.file_id, from_chunks.file_id, from_file.file_id, stored.file_id]  # newest first, by cursor
    assert client.files.delete(from_file.file_id).file_id == from_file.file_id
    with pytest.raises(NotFound) as gone:
        client.files.get(from_file.file_id)
    assert gone.value.error_code == "FILE_NOT_FOUND"
    with pytest.raises(ValidationFailed) as bad:
        client.files.presign(stored.file_id, expires_in=0)
    assert bad.value.errors and bad.value.errors[0].field == "expires_in"


def test_users_and_login_sessions(client: PersistenceClient) -> None:
    name = new_id("ann")
    ann = client.users.create(UserCreate(username=name, email=f"{name}@example.com", role="translator",
                                         password="correct horse"))
    assert client.users.get(ann.user_id) == ann
    assert client.users.update(ann.user_id, UserPatch(display_name="Ann")).display_name == "Ann"
    assert [u.user_id for u in client.users.list(q=name, limit=1)] == [ann.user_id]
    assert client.users.authenticate(name, "correct horse").user.user_id == ann.user_id
    with pytest.raises(Unauthorized) as wrong:
        client.users.authenticate(name, "wrong password")
    assert wrong.value.error_code == "INVALID_CREDENTIALS"
    with pytest.raises(Conflict) as taken:
        client.users.create(UserCreate(username=name.upper(), email=f"other-{name}@example.com"))
    assert taken.value.error_code == "USERNAME_TAKEN"

    opened = client.user_sessions.create(SessionCreate(user_id=ann.user_id, data={"lang": "zh"}))
    assert client.user_sessions.validate(opened.token).user.user_id == ann.user_id
    assert client.user_sessions.set_data(opened.token, {"lang": "en"}).data == {"lang": "en"}
    second = client.user_sessions.create(SessionCreate(user_id=ann.user_id))
    third = client.user_sessions.create(SessionCreate(user_id=ann.user_id))
    assert {s.session_id for s in client.user_sessions.of_user(ann.user_id).items} == {
        opened.session_id, second.session_id, third.session_id}
    client.user_sessions.revoke(opened.token)
    with pytest.raises(Unauthorized) as invalid:
        client.user_sessions.validate(opened.token)
    assert invalid.value.error_code == "SESSION_INVALID"
    assert client.user_sessions.revoke_id(second.session_id).session_id == second.session_id
    assert client.user_sessions.revoke_all(ann.user_id).revoked == 1
    assert client.users.delete(ann.user_id).user_id == ann.user_id
    with pytest.raises(NotFound):
        client.users.get(ann.user_id)


def test_audit_events_written_searched_exported_and_verified(client: PersistenceClient, tmp_path: Path) -> None:
    actor = new_id("actor")
    start = datetime.now(UTC) - timedelta(seconds=1)
    client.audit.put(AuditEvent(actor, "translate", "task", "success", message="机器翻译完成 for sheet one"))
    client.audit.put({"actor_id": actor, "action": "export", "resource_type": "file", "outcome": "failure",
                      "event_id": "fixed-id-" + actor, "details": {"reason": "disk full"}})
    client.audit.put({"actor_id": actor, "action": "export", "resource_type": "file", "outcome": "failure",
                      "event_id": "fixed-id-" + actor, "details": {"reason": "a second copy is not stored"}})
    client.flush(stored=True)
    events = list(client.audit.search(actor_id=actor))
    assert [e.action for e in events] == ["export", "translate"]  # newest first; the repeated id stored once
    assert events[0].details == {"reason": "disk full"}
    assert [e.actor_id for e in client.audit.search("翻译", actor_id=actor)] == [actor]
    assert list(client.audit.search("disk", actor_id=actor, outcome="success")) == []
    assert client.audit.get("fixed-id-" + actor).outcome == "failure"
    exported = list(client.audit.export(actor_id=actor, since=start))
    assert [e.action for e in exported] == ["translate", "export"]  # oldest first
    assert client.audit.export_to(tmp_path / "events.csv", "csv", actor_id=actor) > 0
    assert (tmp_path / "events.csv").read_text().splitlines()[0].startswith("event_id,occurred_at,actor_id")
    assert client.audit.verify().status == "ok"
    with pytest.raises(NotFound) as missing:
        client.audit.get(new_id("none"))
    assert missing.value.error_code == "AUDIT_EVENT_NOT_FOUND"


def test_one_client_is_shared_by_threads(client: PersistenceClient) -> None:
    sid = new_id("s")
    client.sessions.put(a_session(sid))

    def writer(n: int) -> None:
        for row in range(500):
            client.tasks.put(a_task(f"{sid}-{n}-{row}", sid, row))
        client.flush()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.flush(stored=True)
    assert sum(1 for _ in client.sessions.tasks(sid)) == 2000


def test_coalescing_sends_only_the_last_queued_write_of_a_key(shared_service: Service) -> None:
    """coalesce=True: progress updates of one task queued behind each other
    leave as one write, the last; events are never merged."""
    client = PersistenceClient(base_url(shared_service), flush_interval=3600, coalesce=True)
    sid = new_id("s")
    client.sessions.put(a_session(sid, total_tasks=0))
    client.sessions.put(a_session(sid, total_tasks=10))
    for step in range(50):
        for row in range(10):
            client.tasks.put(a_task(f"{sid}-{row}", sid, row, retry_count=step,
                                    status="completed" if step == 49 else "processing"))
    client.tasks.put({"task_id": f"{sid}-dict", "session_id": sid, "batch_id": "b", "sheet_name": "S",
                      "row_index": 0, "column_name": "A", "source_text": "x", "status": "pending"})
    actor = new_id("actor")
    for _ in range(3):
        client.audit.put(AuditEvent(actor, "same", "task", "success"))  # three events, three ids
    client.flush(stored=True)
    stats = client.stats
    assert stats.put == 2 + 500 + 1 + 3 and stats.coalesced == 1 + 490
    assert stats.acknowledged == 1 + 10 + 1 + 3 and stats.queued == 0 and stats.requests == 3
    assert client.sessions.get(sid).total_tasks == 10
    tasks = {t.task_id: t for t in client.sessions.tasks(sid)}
    assert all(tasks[f"{sid}-{row}"].status == "completed" and tasks[f"{sid}-{row}"].retry_count == 49
               for row in range(10))
    assert len(list(client.audit.search(actor_id=actor))) == 3
    client.close()
