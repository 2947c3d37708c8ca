"""Every rule of API.md's record tables: a bad batch is refused whole with the
right status and field path, and nothing of it reaches the database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from testkit.service import SESSIONS, TASKS, Service, session, sink_rows, task

LONG_CJK = "字" * 21846  # 21,846 characters but 65,538 bytes in UTF-8


def _task(**fields: object) -> dict:
    return {**task("t-bad", "s-ok"), **fields}


def nested(depth: int, container: type = dict) -> object:
    """depth objects (or arrays) inside one another, the innermost holding 1."""
    value: object = 1
    for _ in range(depth):
        value = {"k": value} if container is dict else [value]
    return value


def _without(record: dict, field: str) -> dict:
    return {k: v for k, v in record.items() if k != field}


TASK_CASES = [
    ("missing task_id", _without(_task(), "task_id"), "tasks[0].task_id"),
    ("missing source_text", _without(_task(), "source_text"), "tasks[0].source_text"),
    ("missing status", _without(_task(), "status"), "tasks[0].status"),
    ("empty task_id", _task(task_id=""), "tasks[0].task_id"),
    ("task_id too long", _task(task_id="x" * 65), "tasks[0].task_id"),
    ("session_id too long", _task(session_id="s" * 37), "tasks[0].session_id"),
    ("batch_id too long", _task(batch_id="b" * 65), "tasks[0].batch_id"),
    ("sheet_name too long", _task(sheet_name="n" * 256), "tasks[0].sheet_name"),
    ("column_name empty", _task(column_name=""), "tasks[0].column_name"),
    ("bad status", _task(status="done"), "tasks[0].status"),
    ("cancelled is not a task status", _task(status="cancelled"), "tasks[0].status"),
    ("negative row_index", _task(row_index=-1), "tasks[0].row_index"),
    ("row_index as string", _task(row_index="3"), "tasks[0].row_index"),
    ("row_index as float", _task(row_index=1.5), "tasks[0].row_index"),
    ("row_index as bool", _task(row_index=True), "tasks[0].row_index"),
    ("source_text over 65535 bytes", _task(source_text=LONG_CJK), "tasks[0].source_text"),
    ("source_text over 65535 chars", _task(source_text="a" * 65536), "tasks[0].source_text"),
    ("target_text over 65535 bytes", _task(target_text=LONG_CJK), "tasks[0].target_text"),
    ("context over 65535 bytes", _task(context=LONG_CJK), "tasks[0].context"),
    ("error_message over 65535 bytes", _task(error_message=LONG_CJK), "tasks[0].error_message"),
    ("source_text null", _task(source_text=None), "tasks[0].source_text"),
    ("confidence above 1", _task(confidence=1.01), "tasks[0].confidence"),
    ("confidence below 0", _task(confidence=-0.1), "tasks[0].confidence"),
    ("confidence as string", _task(confidence="0.5"), "tasks[0].confidence"),
    ("negative retry_count", _task(retry_count=-1), "tasks[0].retry_count"),
    ("negative duration_ms", _task(duration_ms=-5), "tasks[0].duration_ms"),
    ("bad start_time", _task(start_time="yesterday"), "tasks[0].start_time"),
    ("bad end_time", _task(end_time="2025-13-01T00:00:00Z"), "tasks[0].end_time"),
    ("bad updated_at", _task(updated_at=12345), "tasks[0].updated_at"),
    # Valid ISO 8601, but past 9999 or before 0001 once converted to UTC: no sink can store it.
    ("updated_at past 9999 in UTC", _task(updated_at="9999-12-31T23:59:59-01:00"), "tasks[0].updated_at"),
    ("start_time before 0001 in UTC", _task(start_time="0001-01-01T00:00:00+01:00"), "tasks[0].start_time"),
    ("end_time past 9999 in UTC", _task(end_time="9999-12-31T23:59:59.999999-00:01"), "tasks[0].end_time"),
    ("row_index past BIGINT", _task(row_index=2**63), "tasks[0].row_index"),
    ("duration_ms past BIGINT", _task(duration_ms=2**63), "tasks[0].duration_ms"),
    ("item not an object", "task", "tasks[0]"),
]

SESSION_CASES = [
    ("missing filename", _without(session("s-bad"), "filename"), "sessions[0].filename"),
    ("missing llm_provider", _without(session("s-bad"), "llm_provider"), "sessions[0].llm_provider"),
    ("session_id too long", session("s" * 37), "sessions[0].session_id"),
    ("session_id empty", session(""), "sessions[0].session_id"),
    ("filename too long", session("s-bad", filename="f" * 256), "sessions[0].filename"),
    ("file_path too long", session("s-bad", file_path="p" * 513), "sessions[0].file_path"),
    ("llm_provider too long", session("s-bad", llm_provider="l" * 51), "sessions[0].llm_provider"),
    ("bad status", session("s-bad", status="running"), "sessions[0].status"),
    ("game_info not an object", session("s-bad", game_info=[1, 2]), "sessions[0].game_info"),
    ("metadata not an object", session("s-bad", metadata="text"), "sessions[0].metadata"),
    ("negative total_tasks", session("s-bad", total_tasks=-1), "sessions[0].total_tasks"),
    ("completed_tasks as string", session("s-bad", completed_tasks="1"), "sessions[0].completed_tasks"),
    ("failed_tasks too large", session("s-bad", failed_tasks=2**64), "sessions[0].failed_tasks"),
    ("total_tasks past BIGINT", session("s-bad", total_tasks=2**63), "sessions[0].total_tasks"),
    ("updated_at past 9999 in UTC", session("s-bad", updated_at="9999-12-31T23:59:59-01:00"),
     "sessions[0].updated_at"),
    ("game_info 32 objects deep", session("s-bad", game_info=nested(32)), "sessions[0].game_info"),
    ("metadata 32 levels of arrays", session("s-bad", metadata={"a": nested(31, list)}), "sessions[0].metadata"),
]


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("validation")
    service = Service(folder, f"sqlite:///{folder / 'store.db'}", max_body_bytes=2 * 1024 * 1024)
    service.start()
    assert service.post_sessions([session("s-ok")]).status_code == 202
    assert service.flush().status_code == 200
    yield service
    service.kill()


def _assert_nothing_stored(svc: Service) -> None:
    assert svc.flush().status_code == 200
    assert sink_rows(svc.sink_url, "translation_tasks") == []
    assert [r["session_id"] for r in sink_rows(svc.sink_url, "translation_sessions")] == ["s-ok"]


def _assert_error_shape(body: dict, error_code: str) -> None:
    assert set(body) >= {"detail", "error_code", "errors"}
    assert body["error_code"] == error_code and body["detail"]


@pytest.mark.parametrize(("case", "bad", "path"), TASK_CASES, ids=[c[0] for c in TASK_CASES])
def test_bad_task_refuses_the_whole_batch(svc: Service, case: str, bad: object, path: str) -> None:
    good = task("t-good", "s-ok")
    r = svc.post(TASKS, {"tasks": [bad, good]})
    assert r.status_code == 422, r.text
    _assert_error_shape(r.json(), "VALIDATION_ERROR")
    assert path in [e["field"] for e in r.json()["errors"]], r.json()
    _assert_nothing_stored(svc)


@pytest.mark.parametrize(("case", "bad", "path"), SESSION_CASES, ids=[c[0] for c in SESSION_CASES])
def test_bad_session_refuses_the_whole_batch(svc: Service, case: str, bad: dict, path: str) -> None:
    r = svc.post(SESSIONS, {"sessions": [bad, session("s-good")]})
    assert r.status_code == 422, r.text
    assert path in [e["field"] for e in r.json()["errors"]], r.json()
    _assert_nothing_stored(svc)


def test_every_bad_item_and_field_is_named(svc: Service) -> None:
    items = [task("t-0", "s-ok"), _task(status="bogus", row_index=-2), task("t-2", "s-ok"), {}, 7]
    r = svc.post(TASKS, {"tasks": items})
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert {"tasks[1].status", "tasks[1].row_index", "tasks[3].task_id", "tasks[3].status", "tasks[4]"} <= fields
    assert not any(f.startswith(("tasks[0]", "tasks[2]")) for f in fields)
    _assert_nothing_stored(svc)


@pytest.mark.parametrize(("body", "field"), [
    ({"tasks": []}, "tasks"),
    ({"tasks": [task(f"t-{i}", "s-ok") for i in range(1001)]}, "tasks"),
    ({"tasks": {"a": 1}}, "tasks"),
    ({"items": []}, "tasks"),
    ([1, 2], ""),
])
def test_batch_envelope_rules(svc: Service, body: object, field: str) -> None:
    r = svc.post(TASKS, body)
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]]
    _assert_nothing_stored(svc)


def test_exactly_1000_items_is_accepted(svc: Service) -> None:
    r = svc.post(SESSIONS, {"sessions": [session(f"s-{i}") for i in range(1000)]})
    assert r.status_code == 202 and r.json()["count"] == 1000
    assert svc.flush().status_code == 200
    assert len(sink_rows(svc.sink_url, "translation_sessions")) == 1001
    # Leave the module's fixture as the other tests expect it.
    conn = sqlite3.connect(svc.sink_url[len("sqlite:///"):])
    conn.execute("DELETE FROM translation_sessions WHERE session_id != 's-ok'")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(("content", "headers", "status", "code"), [
    (b'{"tasks": [', {"content-type": "application/json"}, 400, "INVALID_JSON"),
    (b"not json at all", {"content-type": "application/json"}, 400, "INVALID_JSON"),
    (b"\xff\xfe\x00", {"content-type": "application/json"}, 400, "INVALID_JSON"),
    (b'{"tasks": []}', {"content-type": "text/plain"}, 400, "UNSUPPORTED_CONTENT_TYPE"),
])
def test_bad_body_is_400(svc: Service, content: bytes, headers: dict, status: int, code: str) -> None:
    r = svc.http.post(TASKS, content=content, headers=headers)
    assert r.status_code == status, r.text
    _assert_error_shape(r.json(), code)
    _assert_nothing_stored(svc)


def test_body_over_max_body_bytes_is_413(svc: Service) -> None:
    big = [task(f"t-{i}", "s-ok", source_text="x" * 60000) for i in range(40)]  # ~2.4 MB
    r = svc.post(TASKS, {"tasks": big})
    assert r.status_code == 413
    _assert_error_shape(r.json(), "PAYLOAD_TOO_LARGE")
    # The same without a Content-Length header (chunked upload) is refused too.
    r = svc.http.post(TASKS, content=iter([b"{\"tasks\": [\"", b"x" * 3 * 1024 * 1024, b"\"]}"]),
                      headers={"content-type": "application/json"})
    assert r.status_code == 413
    _assert_nothing_stored(svc)


def test_json_nested_past_the_parser_limit_is_422_not_500(svc: Service) -> None:
    deep = b'{"sessions": [{"session_id": "s-bad", "game_info": ' + b'{"k": ' * 5000 + b"1" + b"}" * 5000 + b"}]}"
    r = svc.http.post(SESSIONS, content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "sessions" and "deeper" in r.json()["errors"][0]["message"]
    _assert_nothing_stored(svc)


def test_values_at_every_limit_are_stored_and_read_back_on_each_sink(service) -> None:
    """The documented limits (README, "Limits") hold on both sinks: every edge
    value is accepted, written and read back as it was sent."""
    big = 2**63 - 1
    edge_session = session("s-edge", game_info=nested(31), metadata={"deep": nested(30, list)},
                           total_tasks=big, completed_tasks=big, failed_tasks=big, processing_tasks=big,
                           updated_at="9999-12-31T23:59:59.999999Z")
    edge_task = task("t-edge", "s-edge", row_index=big, retry_count=big, duration_ms=big,
                     start_time="0001-01-01T00:00:00Z", end_time="9999-12-31T23:59:59.999999+00:00",
                     updated_at="0001-01-01T01:00:00+01:00", source_text="字" * 21845)
    assert service.post_sessions([edge_session]).status_code == 202
    assert service.post_tasks([edge_task]).status_code == 202
    flushed = service.flush()
    assert flushed.status_code == 200 and flushed.json()["dead_lettered"] == 0, flushed.text
    stored = service.http.get("/api/v1/translation/sessions/s-edge").json()
    assert stored["game_info"] == edge_session["game_info"] and stored["metadata"] == edge_session["metadata"]
    assert stored["total_tasks"] == big and stored["updated_at"] == "9999-12-31T23:59:59.999999Z"
    got = service.http.get("/api/v1/translation/tasks/t-edge").json()
    assert (got["row_index"], got["retry_count"], got["duration_ms"]) == (big, big, big)
    assert got["start_time"] == "0001-01-01T00:00:00.000000Z" and got["end_time"] == "9999-12-31T23:59:59.999999Z"
    assert got["updated_at"] == "0001-01-01T00:00:00.000000Z" and got["source_text"] == "字" * 21845
    assert service.http.get("/api/v1/translation/stats").status_code == 200
