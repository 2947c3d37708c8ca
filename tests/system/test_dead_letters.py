"""Dead letters: listed, retried (back through the flusher, in order, with
their own version) and purged over HTTP; the spool operations on a real
spool file."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.records import JSON_ENCODER, KIND_SESSIONS, KIND_TASKS
from persistence_api.translation import Task
from core.settings import SpoolSettings
from testkit.service import Service, task, wait_for
from tests.system import BAD_ROW_INDEX, DEAD_LETTERS, allow_large_row_index, make_dead_letters, stored_tasks
from wal import Spool, SpoolFull, dead_letters
from wal.types import DeadLetter, DrainCommit


def _q(service, method: str, path: str, **kwargs):
    return service.http.request(method, f"http://127.0.0.1:{service.query_port}{path}", **kwargs)


def test_list_retry_and_purge_over_http(service) -> None:
    make_dead_letters(service, bad=(17, 33, 40))
    page = _q(service, "GET", DEAD_LETTERS).json()
    assert page["total"] == 3 and page["next_after_id"] is None
    assert [d["record_key"] for d in page["items"]] == ["t-017", "t-033", "t-040"]
    first = page["items"][0]
    assert first["kind"] == "task" and first["payload"]["row_index"] == BAD_ROW_INDEX + 17
    assert first["error"] and first["failed_at"].endswith("Z")
    # Paging, through port 8001's proxy.
    one = service.http.get(DEAD_LETTERS, params={"limit": 1}).json()
    assert [d["id"] for d in one["items"]] == [first["id"]] and one["next_after_id"] == first["id"]
    rest = service.http.get(DEAD_LETTERS, params={"limit": 5, "after_id": first["id"]}).json()
    assert [d["record_key"] for d in rest["items"]] == ["t-033", "t-040"]

    # While the rule stands, a newer write of t-033 that obeys it is stored.
    assert service.post_tasks([task("t-033", "s-1", row_index=3)]).status_code == 202
    assert service.flush().status_code == 200
    allow_large_row_index(service.sink_url)

    ids = {d["record_key"]: d["id"] for d in page["items"]}
    answer = _q(service, "POST", f"{DEAD_LETTERS}/retry", json={"ids": [ids["t-017"], 999_999]})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "retried", "retried": 1, "retried_ids": [ids["t-017"]], "skipped": [],
                             "not_found": [999_999]}
    assert service.flush().status_code == 200
    assert stored_tasks(service)["t-017"]["row_index"] == BAD_ROW_INDEX + 17

    answer = service.post(f"{DEAD_LETTERS}/retry", {"all": True})
    assert answer.json()["retried_ids"] == [ids["t-033"], ids["t-040"]]
    assert service.flush().status_code == 200
    stored = stored_tasks(service)
    assert stored["t-040"]["row_index"] == BAD_ROW_INDEX + 40
    # The retried t-033 is older than the write that reached the database meanwhile: that one stays.
    assert stored["t-033"]["row_index"] == 3
    assert len(stored) == 50
    assert _q(service, "GET", DEAD_LETTERS).json() == {"total": 0, "items": [], "next_after_id": None}
    wait_for(lambda: service.http.get("/health").json()["buffer"]["dead_letters"] == 0, 5, "no dead letters")


def test_purge_by_ids_and_all(service_factory, tmp_path: Path) -> None:
    service = service_factory(f"sqlite:///{tmp_path / 'store.db'}")
    make_dead_letters(service, bad=(1, 2, 3))
    ids = [d["id"] for d in service.http.get(DEAD_LETTERS).json()["items"]]
    answer = service.post(f"{DEAD_LETTERS}/purge", {"ids": [ids[0]]})
    assert answer.status_code == 200 and answer.json() == {"status": "purged", "purged": 1}
    assert [d["id"] for d in service.http.get(DEAD_LETTERS).json()["items"]] == ids[1:]
    answer = service.http.request("DELETE", DEAD_LETTERS, json={"all": True})
    assert answer.json() == {"status": "purged", "purged": 2}
    assert service.http.get(DEAD_LETTERS).json()["total"] == 0
    assert set(stored_tasks(service)) == {f"t-{i:03d}" for i in range(50)} - {"t-001", "t-002", "t-003"}


@pytest.fixture(scope="module")
def plain_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One SQLite-backed service for the cases that only check answers to bad requests."""
    folder = tmp_path_factory.mktemp("dead-letters")
    service = Service(folder, f"sqlite:///{folder / 'store.db'}")
    service.start()
    yield service
    service.kill()


@pytest.mark.parametrize("body, status", [
    ({}, 422), ({"ids": []}, 422), ({"ids": [1], "all": True}, 422), ({"all": False}, 422),
    ({"ids": ["x"]}, 422), ({"every": True}, 422), (None, 422), (b"{nope", 400)])
def test_a_selection_must_be_explicit(plain_service: Service, body, status) -> None:
    content = body if isinstance(body, bytes) else (b"" if body is None else JSON_ENCODER.encode(body))
    for path in (f"{DEAD_LETTERS}/retry", f"{DEAD_LETTERS}/purge"):
        answer = plain_service.http.post(path, content=content, headers={"content-type": "application/json"})
        assert answer.status_code == status, answer.text
        assert answer.json()["error_code"] == ("INVALID_JSON" if status == 400 else "VALIDATION_ERROR")


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1001}, {"after_id": -1}, {"limit": "x"}])
def test_paging_parameters_are_checked(plain_service: Service, params) -> None:
    answer = plain_service.http.get(DEAD_LETTERS, params=params)
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == next(iter(params))


# -- the spool operations on a real file (no server) --------------------------

def _task_json(task_id: str, **fields) -> bytes:
    values = {"session_id": "s-1", "batch_id": "b", "sheet_name": "S", "row_index": 1, "column_name": "c",
              "source_text": "x", "status": "pending", **fields}
    return JSON_ENCODER.encode(Task(task_id=task_id, **values))


def _spool_with(tmp_path: Path, letters: list[DeadLetter], max_bytes: int = 64 * 1024 * 1024) -> Spool:
    spool = Spool.open(SpoolSettings(path=str(tmp_path / "spool.db"), sync="normal", max_bytes=max_bytes))
    spool.commit_drain(DrainCommit(through_seq=0, dead=letters))
    return spool


def test_retry_moves_records_back_in_one_transaction_each_with_its_version(tmp_path: Path) -> None:
    batch = b'{"sessions":[{"session_id":"s-9","filename":"f","file_path":"p","status":"pending","llm_provider":"o"}]}'
    spool = _spool_with(tmp_path, [
        DeadLetter(5, KIND_TASKS, "t-1", 1_700_000_000_000_000, "refused", _task_json("t-1")),
        DeadLetter(6, KIND_SESSIONS, "", 1_700_000_000_000_001, "undecodable", b'{"sessions":[{"id":1}]}'),
        DeadLetter(7, KIND_SESSIONS, "", 1_700_000_000_000_002, "undecodable", batch),
        DeadLetter(0, KIND_TASKS, "t-2", 1_700_000_000_000_003, "orphan",
                   _task_json("t-2", updated_at=datetime(2020, 1, 1, tzinfo=UTC))),
        DeadLetter(8, 99, "", 1_700_000_000_000_004, "unknown kind", b"{}"),
    ])
    try:
        report = dead_letters.retry(spool)
        assert report.retried == [1, 3, 4] and report.not_found == []
        assert [s.id for s in report.skipped] == [2, 5]
        entries = spool.read(0, 100)
        assert [(e.kind, e.record_count) for e in entries] == [(KIND_TASKS, 1), (KIND_SESSIONS, 1), (KIND_TASKS, 1)]
        assert b'"updated_at":"2023-11-14T22:13:20Z"' in entries[0].payload  # its first acceptance, kept
        assert b'"updated_at":"2020-01-01T00:00:00Z"' in entries[2].payload  # the client's own version
        stats = spool.stats()
        assert (stats.pending_sessions, stats.pending_tasks, stats.dead_letters) == (1, 2, 2)
        assert stats.pending_bytes == sum(len(e.payload) for e in entries)
        assert [d.id for d in dead_letters.page(spool, 10)] == [2, 5]
        assert dead_letters.retry(spool, [2, 77]).not_found == [77]
        assert dead_letters.purge(spool, [2, 5]) == 2 and dead_letters.count(spool) == 0
    finally:
        spool.close()


def test_a_retry_that_does_not_fit_moves_nothing(tmp_path: Path) -> None:
    big = _task_json("t-big", source_text="x" * 60_000)
    spool = _spool_with(tmp_path, [DeadLetter(1, KIND_TASKS, f"t-{i}", 1, "refused", big) for i in range(20)],
                        max_bytes=1024 * 1024)
    try:
        with pytest.raises(SpoolFull):
            dead_letters.retry(spool)
        assert dead_letters.count(spool) == 20 and spool.read(0, 100) == []
        assert spool.stats().pending_bytes == 0
        assert dead_letters.retry(spool, [1, 2]).retried == [1, 2]  # a smaller selection fits
    finally:
        spool.close()
