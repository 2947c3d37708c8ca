"""Backups end to end, on each sink: a backup taken while clients write
restores, into an empty database, every record acknowledged before it began
(checked row by row), with the files, users and the audit log's search; verify
finds damage; restore refuses what it must and a damaged backup changes
nothing; the API answers as API.md says."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymysql
import pytest

from persistence_api.users import UserCreate
from persistence_client import PersistenceClient
from testkit.service import MYSQL_HOST, MYSQL_PORT, Service, session, sink_rows, task, wait_for

FAST_HASH = "[users]\nhash_time_cost = 1\nhash_memory_kib = 8192\n"
BACKUPS = "/api/v1/system/backups"
BASE_TIME = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)  # versions the client sends


def version_time(n: int) -> str:
    return (BASE_TIME + timedelta(microseconds=n)).isoformat().replace("+00:00", "Z")


@pytest.fixture
def second_mysql_url() -> Iterator[str]:
    name = f"ps_test_{uuid.uuid4().hex[:12]}"
    yield f"mysql://root@{MYSQL_HOST}:{MYSQL_PORT}/{name}"
    conn = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", password="")
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


def cli(service: Service, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core.cli", "--config", str(service.config), "backup", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=service.folder)


def query_url(service: Service) -> str:
    return f"http://127.0.0.1:{service.query_port}"


def wait_backup(service: Service, backup_id: str, timeout: float = 120) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        body = service.http.get(f"{query_url(service)}{BACKUPS}/{backup_id}").json()
        return body if body["status"] != "running" else None
    return wait_for(ended, timeout, f"backup {backup_id} to end")


def restore_target(source: Service, folder: Path, sink_url: str) -> Service:
    """A stopped service in a new folder and database, reading the source's backups and files."""
    files = source.folder / "data" / "files"
    return Service(folder, sink_url, extra_toml=FAST_HASH + f'[files]\nurl = "file:///{files}"\n')


class Writer(threading.Thread):
    """Updates tasks over and over with growing versions (updated_at sent by
    the client; target_text says the version), remembering per task the last
    version acknowledged and the highest sent."""

    def __init__(self, service: Service, session_id: str, task_ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.service, self.session_id, self.task_ids = service, session_id, task_ids
        self.acked: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.version = 0
        self.requests = 0

    def run(self) -> None:
        while not self.stop.is_set():
            batch = {}
            for task_id in self.task_ids[self.version % 7::7][:200]:
                self.version += 1
                batch[task_id] = self.version
            with self.lock:
                for task_id, version in batch.items():
                    self.sent[task_id] = version
            answer = self.service.post_tasks([task(t, self.session_id, target_text=f"v{v}", status="completed",
                                                   updated_at=version_time(v)) for t, v in batch.items()])
            assert answer.status_code == 202, answer.text
            self.requests += 1
            with self.lock:
                self.acked.update(batch)

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        with self.lock:
            return dict(self.acked), dict(self.sent)


@pytest.mark.parametrize("sink", ["sqlite", "mysql"])
def test_backup_under_write_load_restores_every_acknowledged_record(
        sink: str, service_factory, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    source_url = f"sqlite:///{tmp_path / 'store.db'}" if sink == "sqlite" else request.getfixturevalue("mysql_url")
    target_url = (f"sqlite:///{tmp_path / 'restored.db'}" if sink == "sqlite"
                  else request.getfixturevalue("second_mysql_url"))
    source = service_factory(source_url, extra_toml=FAST_HASH)
    client = PersistenceClient(f"http://127.0.0.1:{source.ingest_port}")
    try:
        session_id = f"s-{uuid.uuid4().hex[:8]}"
        task_ids = [f"{session_id}-t{i}" for i in range(3000)]
        assert source.post_sessions([session(session_id, game_info={"name": "元気", "n": 1})]).status_code == 202
        for start in range(0, len(task_ids), 1000):
            assert source.post_tasks([task(t, session_id, updated_at=version_time(0))
                                      for t in task_ids[start:start + 1000]]).status_code == 202
        content = "翻訳 backup ✓ ".encode() * 5000
        uploaded = client.files.upload(content, "glossary.txt", "text/plain", session_id=session_id)
        user = client.users.create(UserCreate(username="mei", email="mei@example.com", password="correct horse 1"))
        for n in range(50):
            client.audit.put({"actor_id": "mei", "action": "translate", "resource_type": "task",
                              "outcome": "success", "message": f"翻訳した 第{n}行 zebra{n}"})
        client.flush(stored=True)

        writer = Writer(source, session_id, task_ids)
        writer.start()
        wait_for(lambda: writer.requests >= 20, 60, "the writer to get going")
        acked_before, _ = writer.snapshot()
        started = source.http.post(f"{query_url(source)}{BACKUPS}")
        assert started.status_code == 202, started.text
        assert started.json()["status"] == "running"
        backup_id = started.json()["backup_id"]
        backup = wait_backup(source, backup_id)
        _, sent_by_end = writer.snapshot()
        writer.stop.set()
        writer.join(30)
        assert backup["status"] == "completed", backup
        assert backup["sink"] == sink and backup["size_bytes"] > 0
        records = backup["records"]
        assert records["sessions"] == 1 and records["files"] == 1 and records["users"] == 1
        assert records["audit_events"] >= 50  # and the service's own events
        assert records["tasks"] + records["spool_records"] >= 3000

        checked = source.http.post(f"{query_url(source)}{BACKUPS}/{backup_id}/verify")
        assert checked.status_code == 200
        assert checked.json()["status"] == "ok", checked.json()
        assert checked.json()["checked_bytes"] == backup["size_bytes"]
        listed = source.http.get(f"{query_url(source)}{BACKUPS}").json()["items"]
        assert [b["backup_id"] for b in listed] == [backup_id]
    finally:
        client.close()
    source.stop()

    target = restore_target(source, tmp_path / "target", target_url)
    done = cli(target, "restore", backup_id)
    assert done.returncode == 0, done.stdout + done.stderr
    target.start()
    try:
        assert target.flush().status_code == 200  # the spool's entries of the backup reach the database
        restored = {r["task_id"]: r for r in sink_rows(target_url, "translation_tasks")}
        assert set(restored) == set(task_ids)
        behind = ahead = 0
        for task_id in task_ids:
            text = restored[task_id]["target_text"]
            version = int(text[1:]) if text else 0
            # At least what was acknowledged before the backup began; never more than was ever sent.
            behind += version < acked_before.get(task_id, 0)
            ahead += version > sent_by_end.get(task_id, 0)
            if version:
                stored_version = restored[task_id]["updated_at"]
                stored_text = stored_version if isinstance(stored_version, str) else stored_version.isoformat(" ")
                assert stored_text.startswith(version_time(version)[:19].replace("T", " ")), (task_id, stored_text)
        assert (behind, ahead) == (0, 0)
        assert len(acked_before) > 100  # the check above compared real updates

        reader = PersistenceClient(f"http://127.0.0.1:{target.ingest_port}")
        try:
            detail = reader.sessions.get(session_id)
            assert detail.game_info == {"name": "元気", "n": 1}
            with reader.files.open(uploaded.file_id) as chunks:
                assert b"".join(chunks) == content
            assert reader.users.authenticate("mei", "correct horse 1").user.user_id == user.user_id
            found = list(reader.audit.search("zebra7"))
            assert [e.message for e in found] == ["翻訳した 第7行 zebra7"]
            assert len(list(reader.audit.search("翻訳"))) == 50
            assert reader.audit.verify().status == "ok"
        finally:
            reader.close()
    finally:
        target.kill()


def test_verify_finds_a_damaged_part_and_restore_refuses_it(service_factory, tmp_path: Path) -> None:
    source = service_factory(f"sqlite:///{tmp_path / 'store.db'}")
    assert source.post_sessions([session("s1")]).status_code == 202
    for start in (0, 1000):
        assert source.post_tasks([task(f"t{i}", "s1", context=f"{i} " * 100)
                                  for i in range(start, start + 1000)]).status_code == 202
    assert source.flush().status_code == 200
    made = cli(source, "create")
    assert made.returncode == 0, made.stderr
    backup_id = made.stdout.split('"backup_id": "')[1].split('"')[0]
    part = source.folder / "data" / "files" / "backups" / backup_id / "sink.sqlite.zst"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))

    answer = source.http.post(f"{query_url(source)}{BACKUPS}/{backup_id}/verify").json()
    assert answer["status"] == "damaged"
    assert any(p.startswith("sink:") for p in answer["problems"]), answer
    assert cli(source, "verify", backup_id).returncode == 1

    target = restore_target(source, tmp_path / "target", f"sqlite:///{tmp_path / 'restored.db'}")
    refused = cli(target, "restore", backup_id)
    assert refused.returncode == 1
    assert "sink" in refused.stderr
    assert not (tmp_path / "restored.db").exists()  # nothing was changed
    assert not list((tmp_path / "target").glob("*.restore*"))


def test_restore_refuses_a_running_service_and_a_target_with_records(service_factory, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    source = service_factory(url)
    assert source.post_sessions([session("kept")]).status_code == 202
    assert source.flush().status_code == 200
    made = cli(source, "create")
    assert made.returncode == 0, made.stderr
    backup_id = made.stdout.split('"backup_id": "')[1].split('"')[0]
    assert source.post_sessions([session("after")]).status_code == 202
    assert source.flush().status_code == 200

    running = cli(source, "restore", backup_id)
    assert running.returncode == 1 and "running" in running.stderr
    source.stop()
    not_empty = cli(source, "restore", backup_id)
    assert not_empty.returncode == 1 and "not empty" in not_empty.stderr
    assert {r["session_id"] for r in sink_rows(url, "translation_sessions")} == {"kept", "after"}
    forced = cli(source, "restore", backup_id, "--force")
    assert forced.returncode == 0, forced.stderr
    assert {r["session_id"] for r in sink_rows(url, "translation_sessions")} == {"kept"}
    unknown = cli(source, "restore", "20260101T000000Z-abcdef")
    assert unknown.returncode == 1 and "no backup" in unknown.stderr


def test_backup_api_errors(service_factory, tmp_path: Path) -> None:
    source = service_factory(f"sqlite:///{tmp_path / 'store.db'}")
    base = f"{query_url(source)}{BACKUPS}"
    for backup_id in ("20260101T000000Z-abcdef", "not-an-id", "x" * 200):
        missing = source.http.get(f"{base}/{backup_id}")
        assert missing.status_code == 404
        assert missing.json()["error_code"] == "BACKUP_NOT_FOUND"
    assert source.http.get(f"{base}/..%2F..%2Fconfig.toml").status_code == 404
    assert source.http.post(f"{base}/20260101T000000Z-abcdef/verify").status_code == 404
    # Another backup in progress on this machine (its lock held): 409, nothing started.
    with open(source.folder / "backup.lock", "a+") as lock:  # (what a running backup holds)
        fcntl.flock(lock, fcntl.LOCK_EX)
        busy = source.http.post(base)
        assert busy.status_code == 409 and busy.json()["error_code"] == "BACKUP_RUNNING"
    assert source.http.get(base).json() == {"items": []}


def test_scheduled_backups_keep_the_newest_and_publish_their_age(service_factory, tmp_path: Path) -> None:
    source = service_factory(f"sqlite:///{tmp_path / 'store.db'}", backup_interval=1.0, backup_keep=2)
    assert source.post_sessions([session("s1")]).status_code == 202
    base = f"{query_url(source)}{BACKUPS}"
    seen: set[str] = set()

    def three_made() -> bool:
        items = source.http.get(base).json()["items"]
        completed = [b for b in items if b["status"] == "completed"]
        assert len(completed) <= 2, items  # backup.keep
        assert all(b["trigger"] == "schedule" for b in items)
        seen.update(b["backup_id"] for b in completed)
        return len(seen) >= 3
    wait_for(three_made, 60, "three scheduled backups", interval=0.2)
    oldest = min(seen)
    assert not (source.folder / "data" / "files" / "backups" / oldest).exists()  # pruned, parts and all
    metrics = source.http.get(f"{query_url(source)}/metrics").text
    values = {x.split()[0]: float(x.split()[-1]) for x in metrics.splitlines() if x.startswith("persistence_backup")}
    assert time.time() - values["persistence_backup_last_success_timestamp_seconds"] < 60
    assert values["persistence_backup_interval_seconds"] == 1.0
    assert values["persistence_backup_last_size_bytes"] > 0
