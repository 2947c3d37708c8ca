"""No record can stop the flusher. Records that today's validation refuses
may already sit in a spool (accepted by an older version, or appended by an
operator's tool); a database may refuse a row or a command for its own
reasons (an operator's trigger). Each such record is dead-lettered with the
error's text, and every write behind it still reaches the database within
one flush. Logs name the record's key and the error's code, never the
values the database quotes."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import msgspec
import pymysql
import pytest

from core.records import KIND_SESSIONS, KIND_TASKS
from core.settings import SpoolSettings
from testkit.service import session, sink_rows, task, wait_for
from wal import Spool
from wal.types import Append


def _nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _append_raw(spool_path, kind: int, body: dict) -> None:
    """Append an entry as an older version of the service would have: no validation."""
    spool = Spool.open(SpoolSettings(path=str(spool_path)))
    try:
        records = body["sessions"] if kind == KIND_SESSIONS else body["tasks"]
        (seq,) = spool.append_many([Append(kind, msgspec.json.encode(body), len(records))])
        assert isinstance(seq, int)
    finally:
        spool.close()


def _dead(service) -> list[dict]:
    return service.http.get("/api/v1/system/dead-letters").json()["items"]


def test_spooled_records_outside_the_rules_are_dead_lettered_and_the_rest_flows(service) -> None:
    _append_raw(service.spool_path, KIND_SESSIONS,
                {"sessions": [session("deep", game_info=_nested(40)), session("fine-1")]})
    _append_raw(service.spool_path, KIND_TASKS, {"tasks": [
        task("t-late-tz", "fine-1", updated_at="9999-12-31T23:59:59-01:00"),
        task("t-early-tz", "fine-1", start_time="0001-01-01T00:00:00+01:00"),
        task("t-fine", "fine-1")]})
    # A normal write behind them reaches the database within one flush.
    assert service.post_sessions([session("after")]).status_code == 202
    assert service.post_tasks([task("t-after", "after")]).status_code == 202
    flushed = service.flush()
    assert flushed.status_code == 200, flushed.text
    assert flushed.json()["dead_lettered"] == 3 and "dead letters" in flushed.json()["detail"]
    assert {r["session_id"] for r in sink_rows(service.sink_url, "translation_sessions")} == {"fine-1", "after"}
    assert {r["task_id"] for r in sink_rows(service.sink_url, "translation_tasks")} == {"t-fine", "t-after"}
    dead = {d["record_key"]: d for d in _dead(service)}
    assert set(dead) == {"deep", "t-late-tz", "t-early-tz"}
    assert "game_info" in dead["deep"]["error"] and "updated_at" in dead["t-late-tz"]["error"]
    assert "start_time" in dead["t-early-tz"]["error"]
    assert dead["deep"]["payload"]["session_id"] == "deep"  # the one record, not its whole entry
    assert service.http.get("/health").json()["status"] == "healthy"


def _mysql(url: str) -> pymysql.connections.Connection:
    parts = urlsplit(url)
    return pymysql.connect(host=parts.hostname, port=parts.port or 3306, user="root", password="",
                           database=parts.path.strip("/"), autocommit=True, charset="utf8mb4")


@pytest.mark.mysql
def test_rows_and_commands_the_database_refuses_are_dead_lettered_without_values_in_logs(
        service_factory, mysql_url: str) -> None:
    svc = service_factory(mysql_url)
    assert svc.post_sessions([session("s-1"), session("s-locked")]).status_code == 202
    assert svc.flush().status_code == 200
    conn = _mysql(mysql_url)
    with conn.cursor() as cur:  # an operator's own rules, quoting the refused value in their message
        cur.execute("CREATE TRIGGER refuse_secret BEFORE INSERT ON translation_tasks FOR EACH ROW BEGIN"
                    " DECLARE message VARCHAR(200) DEFAULT CONCAT('refused: ', NEW.source_text);"
                    " IF NEW.source_text LIKE 'SECRET%' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = message;"
                    " END IF; END")
        cur.execute("CREATE TRIGGER keep_locked BEFORE DELETE ON translation_sessions FOR EACH ROW"
                    " IF OLD.session_id = 's-locked' THEN"
                    " SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'this session is kept'; END IF")
    conn.close()
    assert svc.post_tasks([task("t-secret", "s-1", source_text="SECRET-4242-value"),
                           task("t-ok", "s-1")]).status_code == 202
    flushed = svc.flush()
    assert flushed.status_code == 200 and flushed.json()["dead_lettered"] == 1, flushed.text
    assert flushed.json()["tasks_written"] == 1
    assert [r["task_id"] for r in sink_rows(mysql_url, "translation_tasks")] == ["t-ok"]
    # A command refused for good answers 500 and is dead-lettered; the spool moves on past it.
    refused = svc.http.delete("/api/v1/translation/sessions/s-locked")
    assert refused.status_code == 500 and refused.json()["error_code"] == "COMMAND_FAILED", refused.text
    assert svc.post_sessions([session("s-2")]).status_code == 202
    assert svc.flush().status_code == 200
    assert {r["session_id"] for r in sink_rows(mysql_url, "translation_sessions")} == {"s-1", "s-locked", "s-2"}
    dead = {d["record_key"] or d["kind"]: d for d in _dead(svc)}
    assert "SECRET-4242-value" in dead["t-secret"]["error"]  # the full text stays where admins read it
    assert dead["delete_session"]["error"].endswith("this session is kept")
    log = svc.log.read_text()
    assert "t-secret" in log and "mysql error 1644" in log
    assert "SECRET-4242" not in log


@pytest.mark.mysql
def test_a_stuck_flusher_makes_health_unhealthy_and_raises_the_metric(service_factory, mysql_url: str) -> None:
    svc = service_factory(mysql_url, stall_after=2.0)
    assert svc.post_sessions([session("s-1")]).status_code == 202
    assert svc.flush().status_code == 200
    conn = _mysql(mysql_url)
    conn.autocommit(False)
    with conn.cursor() as cur:  # another client holds the row: the flusher's upsert waits on its lock
        cur.execute("SELECT * FROM translation_sessions WHERE session_id = 's-1' FOR UPDATE")
    try:
        assert svc.post_sessions([session("s-1", status="completed")]).status_code == 202
        health = wait_for(lambda: (h := svc.http.get("/health")).status_code == 503 and h, 15,
                          "/health to report the stalled flusher")
        body = health.json()
        assert body["status"] == "unhealthy" and "written nothing" in body["reason"], body
        assert body["database"] == "healthy"  # the database answers: this is a stall, not an outage
        metrics = svc.http.get("/metrics").text
        assert "persistence_flusher_stalled 1.0" in metrics
    finally:
        conn.rollback()
        conn.close()
    wait_for(lambda: svc.http.get("/health").json()["status"] == "healthy", 15, "the flusher to recover")
    assert sink_rows(mysql_url, "translation_sessions")[0]["status"] == "completed"
    assert "persistence_flusher_stalled 0.0" in svc.http.get("/metrics").text


def test_orphans_wait_only_while_the_database_is_reachable(service_factory, tmp_path) -> None:
    from persistence_api.translation import Session
    from plugins.tables import SESSION_TABLE, TableRows
    from core.settings import SinkSettings
    from core.times import now_us
    from plugins.sqlite import SqliteSink

    url = f"sqlite:///{tmp_path / 'store.db'}"
    # The grace must outlast a restart (the flusher's healthy clock runs while
    # ingest boots): 8 s, and the service stays stopped for longer than that.
    svc = service_factory(url, orphan_grace=8.0)
    assert svc.post_tasks([task("t-a", "a"), task("t-b", "b")]).status_code == 202
    assert svc.flush().json()["tasks_held"] == 2
    assert svc.stop() == 0
    # While the service is stopped, another writer stores session a; then more than orphan_grace passes.
    sink = SqliteSink.connect(SinkSettings(url=url))
    row = SESSION_TABLE.to_row(msgspec.convert(session("a"), Session), now_us(), now_us())
    sink.write([TableRows(SESSION_TABLE, [row])])
    sink.close()
    time.sleep(9)
    svc.start()
    assert svc.post_sessions([session("b")]).status_code == 202
    assert svc.flush().status_code == 200
    wait_for(lambda: {r["task_id"] for r in sink_rows(url, "translation_tasks")} == {"t-a", "t-b"}, 10,
             "both held tasks to be written once their sessions exist")
    assert _dead(svc) == []
    # A true orphan still expires after orphan_grace of healthy time.
    assert svc.post_tasks([task("t-c", "never")]).status_code == 202
    wait_for(lambda: [d["record_key"] for d in _dead(svc)] == ["t-c"], 25, "the orphan to be dead-lettered")
    assert "orphan_grace" in _dead(svc)[0]["error"]
