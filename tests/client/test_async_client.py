"""AsyncPersistenceClient against the real service: the same methods and the
same writer behaviour as the threaded client, on one event loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from persistence_api.audit import AuditEvent
from persistence_api.users import SessionCreate, UserCreate
from persistence_client import AsyncPersistenceClient, Backoff, NotFound, QueueFull, Rejected, Unauthorized
from testkit.service import Service, free_port
from tests.client.conftest import a_session, a_task, base_url, new_id, stored_task_ids

FAST = Backoff(initial=0.02, maximum=0.25)


def test_async_writes_reads_and_streams(shared_service: Service, tmp_path: Path) -> None:
    async def scenario() -> None:
        refused: list[Rejected] = []
        async with AsyncPersistenceClient(base_url(shared_service), flush_interval=0.05,
                                          on_rejected=refused.append) as client:
            sid = new_id("s")
            client.sessions.put(a_session(sid, total_tasks=2500))
            for row in range(2500):
                client.tasks.put(a_task(f"{sid}-{row:04d}", sid, row, "completed" if row % 2 else "pending"))
            client.tasks.put(a_task(f"{sid}-bad", sid, 0, "not-a-status"))
            actor = new_id("actor")
            client.audit.put(AuditEvent(actor, "translate", "task", "success", message="机器翻译完成"))
            result = await client.flush(stored=True)
            assert result is not None and result.status == "flushed"
            assert client.stats.acknowledged == 2502 and client.stats.rejected == 1
            assert [r["task_id"] for r in refused[0].records] == [f"{sid}-bad"]

            assert (await client.sessions.get(sid)).total_tasks == 2500
            assert (await client.tasks.get(f"{sid}-0001")).status == "completed"
            walked = [t.task_id async for t in client.sessions.tasks(sid, page_size=100)]
            assert len(set(walked)) == 2500
            assert sid in {s.session_id async for s in client.sessions.list(page_size=50)}
            async with client.recovery.restore(sid) as restored:
                assert restored.session is not None and restored.session.session_id == sid
                open_ids = [t.task_id async for t in restored]
            assert restored.tasks_count == len(open_ids) == 1250

            assert [e.actor_id async for e in client.audit.search("翻译", actor_id=actor)] == [actor]
            assert [e.action async for e in client.audit.export(actor_id=actor)] == ["translate"]
            assert (await client.audit.verify()).status == "ok"

            stored = await client.files.upload(b"async bytes", "a.txt", "text/plain")
            assert await client.files.download(stored.file_id, tmp_path / "a.txt") == 11
            direct = await client.files.upload_presigned(b"presigned", "p.txt", "text/plain")
            assert (await client.files.get(direct.file_id)).size == 9
            assert (await client.files.delete(direct.file_id)).file_id == direct.file_id

            name = new_id("bo")
            user = await client.users.create(UserCreate(username=name, email=f"{name}@example.com",
                                                        password="long enough"))
            assert (await client.users.authenticate(name, "long enough")).user.user_id == user.user_id
            opened = await client.user_sessions.create(SessionCreate(user_id=user.user_id))
            assert (await client.user_sessions.validate(opened.token)).session.session_id == opened.session_id
            await client.user_sessions.revoke(opened.token)
            with pytest.raises(Unauthorized):
                await client.user_sessions.validate(opened.token)
            with pytest.raises(NotFound) as missing:
                await client.sessions.get(new_id("none"))
            assert missing.value.error_code == "SESSION_NOT_FOUND" and missing.value.request_id

    asyncio.run(scenario())


@pytest.mark.slow
def test_async_writer_rides_out_a_killed_service(service_factory, tmp_path: Path) -> None:
    sink = tmp_path / "store.db"
    service = service_factory(f"sqlite:///{sink}")
    sid = new_id("s")

    async def scenario() -> None:
        async with AsyncPersistenceClient(base_url(service), flush_interval=0.02, backoff=FAST) as client:
            client.sessions.put(a_session(sid))
            restart = asyncio.get_running_loop().run_in_executor(None, _kill_and_restart, service)
            for row in range(10_000):
                client.tasks.put(a_task(f"{sid}-{row}", sid, row))
                if row % 250 == 0:
                    await asyncio.sleep(0.05)
            await restart
            await client.flush(timeout=60)
            assert client.stats.retries > 0, "the kill did not land while the writer was sending"
            await client.flush(stored=True)

    asyncio.run(scenario())
    assert len(stored_task_ids(sink, sid)) == 10_000


def _kill_and_restart(service: Service) -> None:
    time.sleep(0.3)
    service.kill()
    time.sleep(1.0)
    service.start()


def test_async_queue_full_and_close_in_time(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        client = AsyncPersistenceClient(f"http://127.0.0.1:{free_port()}", max_queue=5, flush_interval=0.01,
                                        backoff=FAST)
        sid = new_id("s")
        for row in range(5):
            client.tasks.put(a_task(f"{sid}-{row}", sid, row))
        with pytest.raises(QueueFull):
            client.tasks.put(a_task(f"{sid}-5", sid, 5))
        started = time.monotonic()
        await client.close(timeout=0.5)
        assert time.monotonic() - started < 3

    asyncio.run(scenario())
    assert "5 records unsent" in caplog.text


def test_both_clients_offer_the_same_methods() -> None:
    """Every area of the threaded client has its awaited twin, method for method."""
    from persistence_client import PersistenceClient
    threaded = PersistenceClient("http://127.0.0.1:1")
    awaited = AsyncPersistenceClient("http://127.0.0.1:1")
    for area in ("sessions", "tasks", "recovery", "files", "users", "user_sessions", "audit"):
        mine = {name for name in dir(getattr(threaded, area)) if not name.startswith("_")}
        theirs = {name for name in dir(getattr(awaited, area)) if not name.startswith("_")}
        assert mine == theirs, area
    for name in ("flush", "close", "health", "service_stats", "run", "stream", "pages", "stats"):
        assert hasattr(awaited, name) and hasattr(threaded, name)
    threaded.close()


ASYNC_EXITING_BACKEND = """
import asyncio, sys
from persistence_client import AsyncPersistenceClient
from tests.client.conftest import a_session, a_task

async def main() -> None:
    client = AsyncPersistenceClient(sys.argv[1], flush_interval=3600)
    client.sessions.put(a_session(sys.argv[2]))
    for row in range(300):
        client.tasks.put(a_task(f"{sys.argv[2]}-{row}", sys.argv[2], row))
    # neither flush() nor close(): asyncio.run closes the loop, then the interpreter exits

asyncio.run(main())
"""


def test_async_records_are_sent_at_interpreter_exit(shared_service: Service) -> None:
    import subprocess
    import sys
    from persistence_client import PersistenceClient
    sid = new_id("s")
    done = subprocess.run([sys.executable, "-c", ASYNC_EXITING_BACKEND, base_url(shared_service), sid],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    reader = PersistenceClient(base_url(shared_service))
    reader.flush(stored=True)
    assert sum(1 for _ in reader.sessions.tasks(sid)) == 300
    reader.close()
