"""The sink's MariaDB stops cleanly for ~15 s during a write load and comes
back on the same folder and port: writes keep getting 202, /health says
degraded (200) with the database unhealthy, /flush answers 503 within
flush_timeout, and after the restart everything acknowledged is stored."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.settings import SinkSettings
from testkit.mariadb import PrivateMariaDB
from plugins.mysql import MysqlSink
from testkit.load import Load, check_sink, flush_until_ok, health, running, spool_state
from testkit.service import Service, free_port, wait_for

FLUSH_TIMEOUT = 3.0
OUTAGE_S = 15.0


@pytest.mark.slow
@pytest.mark.parametrize("how, outage_s", [("stop", OUTAGE_S), ("kill", 5.0)])
def test_database_outage(service_factory, private_db: PrivateMariaDB, how: str, outage_s: float) -> None:
    """how: "stop" is a clean SIGTERM shutdown, "kill" a SIGKILL (crash recovery at restart)."""
    url = private_db.url("ps_outage")
    service = service_factory(url, flush_timeout=FLUSH_TIMEOUT)
    load = Load(service, tag="out", threads=2, batch=100, pause=0.1).start()
    load.wait_acked(3_000, 60)
    flush_until_ok(service, 60)

    getattr(private_db, how)()
    down_since = time.monotonic()
    acked_at_stop, failed_at_stop = load.acked_records, load.failed_requests

    def degraded() -> dict | None:
        code, body = health(service)
        return body if (code, body["status"], body["database"]) == (200, "degraded", "unhealthy") else None

    body = wait_for(degraded, 15, "/health to say degraded, database unhealthy")
    assert body["flusher"]["alive"] and body["flusher"]["sink_error"], body

    started = time.monotonic()
    answer = service.flush()
    took = time.monotonic() - started
    assert answer.status_code == 503, answer.text
    failed = answer.json()
    assert failed["status"] == "error" and failed["error_code"] == "FLUSH_TIMEOUT", failed
    assert {"sessions_written", "tasks_written", "detail"} <= failed.keys() and answer.headers.get("retry-after")
    assert FLUSH_TIMEOUT - 0.1 <= took <= FLUSH_TIMEOUT + 5, f"/flush answered after {took:.1f} s"

    # Keep the database down for the whole outage while the load goes on.
    wait_for(lambda: time.monotonic() - down_since >= outage_s, outage_s + 5, "the outage to last")
    code, body = health(service)
    assert (code, body["status"], body["database"]) == (200, "degraded", "unhealthy"), body
    assert load.failed_requests == failed_at_stop, f"writes refused during the outage: {load.statuses}"
    assert load.acked_records >= acked_at_stop + 1_000, "writes stopped being acknowledged"
    assert spool_state(service)["records"] > 0  # the writes wait in the spool

    private_db.start()  # same folder, same port
    flush_until_ok(service, 120)
    wait_for(lambda: health(service)[1]["status"] == "healthy", 30, "/health to say healthy again")
    load.stop()
    assert not load.unexpected and load.failed_requests == 0, load.statuses
    flush_until_ok(service, 120)
    counts = check_sink(url, load)
    assert counts["acked_keys"] > 3_000, counts
    code, body = health(service)
    assert body["buffer"]["dead_letters"] == 0 and body["buffer"]["total_count"] == 0, body


@pytest.mark.slow
def test_sigterm_during_outage_keeps_the_spool(tmp_path: Path, private_db: PrivateMariaDB) -> None:
    """SIGTERM while the database is down: the flusher gives up after
    shutdown_grace, the service exits 0, the spool keeps every acknowledged
    write, and the next start on the same folder delivers them."""
    url = private_db.url("ps_outage_stop")
    folder = tmp_path / "svc"
    first = Service(folder, url, shutdown_grace=2, flush_timeout=FLUSH_TIMEOUT)
    with running(first):
        load = Load(first, tag="os", threads=2, batch=200, max_tasks=2_000)
        load.create_sessions()
        flush_until_ok(first, 60)
        private_db.stop()
        load.start().join(60)
        assert load.acked_records == 4_000 and load.failed_requests == 0, load.statuses
        started = time.monotonic()
        assert first.stop() == 0, first.tail()
        assert time.monotonic() - started < 2 + 20, "the flusher did not give up after shutdown_grace"
    assert spool_state(first)["records"] == load.acked_records

    private_db.start()
    second = Service(folder, url)
    with running(second):
        flush_until_ok(second, 120)
        check_sink(url, load)
        assert spool_state(second)["entries"] == 0


def test_mysql_ping_answers_false_when_the_database_is_down() -> None:
    """Sink.ping() is "True when the database answers now": with nothing
    listening it must answer False, not raise (the flusher calls it unguarded
    at start, in Flusher.run)."""
    sink = MysqlSink.connect(SinkSettings(url=f"mysql://root@127.0.0.1:{free_port()}/x", connect_timeout=1))
    try:
        assert sink.ping() is False
    finally:
        sink.close()


def test_reads_of_users_and_files_work_at_once_after_the_database_restarts(
        service_factory, private_db: PrivateMariaDB, tmp_path: Path) -> None:
    """The query process keeps pooled connections for users and file metadata: after the server
    restarts, the first read finds them dead and must not fail because of it."""
    service = service_factory(private_db.url("ps_pool"), extra_toml=f'[files]\nurl = "file:///{tmp_path / "f"}"\n'
                                                                    "[users]\nhash_time_cost = 1\n"
                                                                    "hash_memory_kib = 8192\n")
    http = service.http
    user = http.post("/api/v1/users", json={"username": "pool", "email": "pool@example.com"})
    assert user.status_code == 201, user.text
    file = http.post("/api/v1/files", params={"filename": "a.txt"}, content=b"abc")
    assert file.status_code == 201, file.text
    # Fill each pool with idle connections (requests at once take several of them).
    for _ in range(4):
        assert http.get(f"/api/v1/users/{user.json()['user_id']}").status_code == 200
        assert http.get(f"/api/v1/files/{file.json()['file_id']}").status_code == 200
    private_db.stop()
    private_db.start()
    time.sleep(2.5)  # longer than the pool's idle check: a stale connection is pinged before use
    for _ in range(6):
        read = http.get(f"/api/v1/files/{file.json()['file_id']}")
        assert read.status_code == 200, read.text
        listed = http.get("/api/v1/users", params={"q": "pool"})
        assert listed.status_code == 200 and listed.json()["items"], listed.text
