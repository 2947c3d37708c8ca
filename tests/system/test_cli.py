"""The operator commands, run for real: `persistence-service dead-letters
list|retry|purge` on the spool file of a config (no server), and
`persistence-service status [--watch]` against a running service."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.records import JSON_ENCODER, KIND_TASKS
from persistence_api.translation import Task
from core.settings import SpoolSettings
from testkit.service import wait_for
from tests.system import BAD_ROW_INDEX, allow_large_row_index, make_dead_letters, stored_tasks
from wal import Spool
from wal.types import DeadLetter, DrainCommit

TIMEOUT_S = 60


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "core.cli", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=TIMEOUT_S, cwd=config.parent, check=False)


def _task(task_id: str) -> bytes:
    return JSON_ENCODER.encode(Task(task_id=task_id, session_id="s-1", batch_id="b", sheet_name="S", row_index=1,
                                    column_name="c", source_text="x", status="pending"))


@pytest.fixture
def offline(tmp_path: Path) -> Path:
    """A config whose spool holds three dead letters, and no service running."""
    config = tmp_path / "config.toml"
    config.write_text('[spool]\npath = "spool.db"\nsync = "normal"\n[sink]\nurl = "sqlite:///store.db"\n')
    spool = Spool.open(SpoolSettings(path=str(tmp_path / "spool.db")))
    try:
        spool.commit_drain(DrainCommit(through_seq=0, dead=[
            DeadLetter(i, KIND_TASKS, f"t-{i}", 1_700_000_000_000_000 + i, f"refused {i}", _task(f"t-{i}"))
            for i in (1, 2, 3)]))
    finally:
        spool.close()
    return config


def _spool_state(config: Path) -> tuple[list[bytes], int]:
    spool = Spool.open(SpoolSettings(path=str(config.parent / "spool.db")))
    try:
        return [e.payload for e in spool.read(0, 100)], spool.stats().dead_letters
    finally:
        spool.close()


def test_list_retry_purge_on_the_spool_file(offline: Path) -> None:
    listed = cli(offline, "dead-letters", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == "3 dead letters"
    assert [line.split()[:3] for line in lines[2:]] == [["1", "task", "t-1"], ["2", "task", "t-2"], ["3", "task", "t-3"]]
    assert "refused 2" in lines[3]

    page = json.loads(cli(offline, "dead-letters", "list", "--json", "--limit", "2").stdout)
    assert [d["record_key"] for d in page["items"]] == ["t-1", "t-2"] and page["next_after_id"] == 2
    assert page["items"][0]["payload"]["task_id"] == "t-1"

    retried = cli(offline, "dead-letters", "retry", "--ids", "2", "9")
    assert retried.returncode == 1  # 9 is not a dead letter
    assert "retried 1 dead letter: 2" in retried.stdout and "not found: 9" in retried.stdout
    entries, dead = _spool_state(offline)
    assert dead == 2 and len(entries) == 1 and b'"task_id":"t-2"' in entries[0]

    purged = cli(offline, "dead-letters", "purge", "--all")
    assert purged.returncode == 0 and purged.stdout.strip() == "purged 2 dead letters"
    assert cli(offline, "dead-letters", "list").stdout.strip() == "0 dead letters"
    assert _spool_state(offline) == (entries, 0)


@pytest.mark.parametrize("args, code", [
    (["dead-letters", "retry"], 2),  # neither --ids nor --all
    (["dead-letters", "purge", "--ids", "1", "--all"], 2),
    (["dead-letters", "list", "--limit", "0"], 2),
    (["dead-letters"], 2),
    (["run", "--all"], 2),  # the roles take no arguments, as before
])
def test_bad_arguments(offline: Path, args: list[str], code: int) -> None:
    result = cli(offline, *args)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert _spool_state(offline)[1] == 3


def test_a_missing_spool_is_reported_not_created(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[spool]\npath = "nowhere/spool.db"\n')
    result = cli(config, "dead-letters", "list")
    assert result.returncode == 1 and "no spool at" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_status_and_retry_against_a_running_service(service_factory, tmp_path: Path) -> None:
    service = service_factory(f"sqlite:///{tmp_path / 'store.db'}")
    make_dead_letters(service)
    url = f"http://127.0.0.1:{service.ingest_port}"
    shown = cli(service.config, "status", "--url", url)
    assert shown.returncode == 0, shown.stderr
    assert "spool         0 sessions + 0 tasks = 0 records" in shown.stdout
    assert "dead letters  2" in shown.stdout and "orphans held  0" in shown.stdout
    assert "status        healthy" in shown.stdout and "flusher alive" in shown.stdout
    assert "rows/s" in shown.stdout and "up " in shown.stdout.splitlines()[0]

    # The CLI works on the spool file while the service runs; the flusher takes the retried records.
    allow_large_row_index(service.sink_url)
    retried = cli(service.config, "dead-letters", "retry", "--all")
    assert retried.returncode == 0 and retried.stdout.startswith("retried 2 dead letters"), retried.stdout
    assert service.flush().status_code == 200
    assert stored_tasks(service)["t-017"]["row_index"] == BAD_ROW_INDEX + 17
    assert "dead letters  0" in cli(service.config, "status").stdout  # the URL comes from the config


def test_status_watch_refreshes_until_ctrl_c(service_factory, tmp_path: Path) -> None:
    service = service_factory(f"sqlite:///{tmp_path / 'store.db'}")
    out = tmp_path / "watch.txt"
    with open(out, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "core.cli", "--config", str(service.config), "status",
                                 "--watch"], stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: out.read_text().count("dead letters") >= 2, 20, "two refreshes of the status view")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    assert "Ctrl-C to stop" in text and "Traceback" not in text
    assert text.count("flush rate    n/a") == 1  # the first screen has no earlier read to compare with


def test_status_of_a_service_that_is_not_there(offline: Path) -> None:
    result = cli(offline, "status", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1 and "cannot read http://127.0.0.1:9/health" in result.stderr
