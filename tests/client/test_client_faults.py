"""The writer when things go wrong, with real processes and real signals:
the service killed while the writer sends, the client process killed with
records unsent (disk buffer), the service pushing back (429/503), fork, the
interpreter exiting, and a service that cannot be reached at all."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from persistence_client import Backoff, PersistenceClient, QueueFull
from testkit.service import Service, free_port
from tests.client.conftest import a_session, a_task, base_url, new_id, stored_task_ids

FAST = Backoff(initial=0.02, maximum=0.25)


def _sink(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "store.db"
    return f"sqlite:///{path}", path


def _answers(service: Service, status: str) -> float:
    """Task batches the service answered with this status (its own metrics)."""
    text = service.http.get("/metrics").text
    return sum(float(m.group(1)) for m in re.finditer(
        r'persistence_http_requests_total\{[^}]*route="/api/v1/translation/tasks/batch"[^}]*status="'
        + status + r'"[^}]*\} ([0-9.e+]+)', text))


@pytest.mark.slow
def test_nothing_acknowledged_is_lost_when_the_service_is_killed_mid_send(service_factory, tmp_path: Path) -> None:
    url, sink = _sink(tmp_path)
    service = service_factory(url)
    client = PersistenceClient(base_url(service), flush_interval=0.02, backoff=FAST)
    sid = new_id("s")
    client.sessions.put(a_session(sid))

    def crash_and_restart() -> None:
        time.sleep(0.4)
        service.kill()  # kill -9 of every process of the service
        time.sleep(1.0)
        service.start()

    crasher = threading.Thread(target=crash_and_restart)
    crasher.start()
    for row in range(20_000):
        client.tasks.put(a_task(f"{sid}-{row}", sid, row))
        if row % 500 == 0:
            time.sleep(0.05)  # the puts span the crash
    crasher.join()
    client.flush(timeout=60)
    assert client.stats.retries > 0, "the kill did not land while the writer was sending"
    assert client.stats.acknowledged == 20_001
    client.flush(stored=True)
    assert len(stored_task_ids(sink, sid)) == 20_000
    client.close()


CRASHING_BACKEND = """
import os, signal, sys
from persistence_client import PersistenceClient
from tests.client.conftest import a_session, a_task
url, buffer, sid, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = PersistenceClient(url, disk_buffer=buffer, flush_interval=3600)
client.sessions.put(a_session(sid))
for row in range(count):
    client.tasks.put(a_task(f"{sid}-{row}", sid, row))
print("put", flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no atexit flush, no goodbye
"""


@pytest.mark.slow
def test_a_killed_backend_sends_its_disk_buffer_when_it_starts_again(service_factory, tmp_path: Path) -> None:
    url, sink = _sink(tmp_path)
    service = service_factory(url)
    buffer = tmp_path / "outbox"
    sid = new_id("s")
    # 2,500 tasks with batch_size 1000: two batches may go out before the kill, the rest only sits in the buffer.
    killed = subprocess.run([sys.executable, "-c", CRASHING_BACKEND, base_url(service), str(buffer), sid, "2500"],
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert killed.returncode == -signal.SIGKILL and "put" in killed.stdout, killed.stderr
    assert list(buffer.glob("*.db")), "the killed process left no buffer file"

    restarted = PersistenceClient(base_url(service), disk_buffer=buffer, flush_interval=0.05)
    restarted.flush(timeout=30)
    restarted.flush(stored=True)
    assert len(stored_task_ids(sink, sid)) == 2500
    restarted.close()
    assert list(buffer.glob("*.db")) == []  # everything sent: no file left behind


def test_the_disk_buffer_keeps_records_while_the_service_is_down(service_factory, tmp_path: Path) -> None:
    """Records put while nothing answers stay on disk across a client's death."""
    url, sink = _sink(tmp_path)
    service = service_factory(url)
    port_down = f"http://127.0.0.1:{free_port()}"
    buffer = tmp_path / "outbox"
    sid = new_id("s")
    killed = subprocess.run([sys.executable, "-c", CRASHING_BACKEND, port_down, str(buffer), sid, "300"],
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (orphan,) = buffer.glob("*.db")
    with sqlite3.connect(orphan) as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 301
    client = PersistenceClient(base_url(service), disk_buffer=buffer)
    client.flush(timeout=30, stored=True)
    assert len(stored_task_ids(sink, sid)) == 300
    client.close()


@pytest.mark.slow
def test_push_back_from_the_service_is_waited_out(service_factory, tmp_path: Path) -> None:
    """The database is locked, the spool fills, the service answers 503/429
    with Retry-After; the writer waits and sends again, and loses nothing."""
    url, sink = _sink(tmp_path)
    service = service_factory(url, spool_max_bytes=2 * 1024 * 1024, max_lag=2.0)
    client = PersistenceClient(base_url(service), flush_interval=0.02, backoff=FAST)
    sid = new_id("s")
    client.sessions.put(a_session(sid))
    client.flush(stored=True)
    blocker = sqlite3.connect(sink, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the flusher cannot write: the backlog grows
    try:
        for row in range(8000):  # ~5 MB of tasks against a 2 MB spool
            client.tasks.put(a_task(f"{sid}-{row}", sid, row, context="x" * 300))
        deadline = time.monotonic() + 30
        while _answers(service, "503") + _answers(service, "429") == 0:
            assert time.monotonic() < deadline, "the service never pushed back"
            time.sleep(0.1)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    client.flush(timeout=60)
    client.flush(stored=True)
    assert len(stored_task_ids(sink, sid)) == 8000
    assert client.stats.retries > 0 and client.stats.rejected == 0
    client.close()


def test_a_forked_child_sends_only_its_own_records(client: PersistenceClient, shared_service: Service,
                                                   tmp_path: Path) -> None:
    quiet = PersistenceClient(base_url(shared_service), flush_interval=3600)  # nothing leaves before flush()
    sid = new_id("s")
    quiet.sessions.put(a_session(sid))
    quiet.flush()
    before = _accepted_tasks(shared_service)
    for row in range(10):
        quiet.tasks.put(a_task(f"{sid}-parent-{row}", sid, row))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            for row in range(5):
                quiet.tasks.put(a_task(f"{sid}-child-{row}", sid, row))
            quiet.flush(timeout=30)
            os.write(write, json.dumps(vars(quiet.stats)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child = json.loads(os.read(read, 10_000))
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child["put"] == child["acknowledged"] == 5  # the parent's queue did not come along
    quiet.flush(timeout=30)
    assert quiet.stats.acknowledged == quiet.stats.put == 11  # the session and its 10 tasks
    assert _accepted_tasks(shared_service) - before == 15  # every task sent once
    quiet.flush(stored=True)
    names = {t.task_id for t in client.sessions.tasks(sid)}
    assert names == {f"{sid}-parent-{r}" for r in range(10)} | {f"{sid}-child-{r}" for r in range(5)}
    quiet.close()


def _accepted_tasks(service: Service) -> float:
    text = service.http.get("/metrics").text
    return sum(float(m.group(1)) for m in re.finditer(r'persistence_records_accepted_total\{kind="task"\} ([0-9.e+]+)',
                                                      text))


EXITING_BACKEND = """
import sys
from persistence_client import PersistenceClient
from tests.client.conftest import a_session, a_task
client = PersistenceClient(sys.argv[1], flush_interval=3600)
client.sessions.put(a_session(sys.argv[2]))
for row in range(300):
    client.tasks.put(a_task(f"{sys.argv[2]}-{row}", sys.argv[2], row))
# no flush(), no close(): the interpreter's exit sends them
"""


def test_records_are_sent_at_interpreter_exit(client: PersistenceClient, shared_service: Service) -> None:
    sid = new_id("s")
    done = subprocess.run([sys.executable, "-c", EXITING_BACKEND, base_url(shared_service), sid],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    client.flush(stored=True)
    assert sum(1 for _ in client.sessions.tasks(sid)) == 300


def test_a_full_queue_refuses_loudly_and_close_gives_up_in_time(caplog: pytest.LogCaptureFixture) -> None:
    nowhere = PersistenceClient(f"http://127.0.0.1:{free_port()}", max_queue=10, flush_interval=0.01, backoff=FAST)
    sid = new_id("s")
    for row in range(10):
        nowhere.tasks.put(a_task(f"{sid}-{row}", sid, row))
    with pytest.raises(QueueFull):
        nowhere.tasks.put(a_task(f"{sid}-10", sid, 10))
    waited = time.monotonic()
    with pytest.raises(QueueFull):
        nowhere.tasks.put(a_task(f"{sid}-10", sid, 10), wait=0.3)  # waits for room, then refuses
    assert time.monotonic() - waited >= 0.3
    assert nowhere.stats.put == 10 and nowhere.stats.queued == 10
    started = time.monotonic()
    nowhere.close(timeout=0.5)
    assert time.monotonic() - started < 3
    assert "10 records unsent" in caplog.text
