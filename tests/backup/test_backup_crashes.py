"""kill -9 in the middle of a backup or a restore, at many moments: a killed
backup is listed as failed and leaves nothing behind once pruned; a killed
restore leaves the old state or the new one, never a mix, and when it was
killed while swapping, the service refuses to start until the same restore
is run again, which finishes it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from testkit.service import Service, session, sink_rows, task

TASKS = 40_000


def cli_args(service: Service, *args: str) -> list[str]:
    return [sys.executable, "-m", "core.cli", "--config", str(service.config), "backup", *args]


def cli(service: Service, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli_args(service, *args), capture_output=True, text=True, timeout=300, cwd=service.folder)


def create(service: Service) -> str:
    made = cli(service, "create")
    assert made.returncode == 0, made.stderr
    return json.loads(made.stdout)["backup_id"]


def fill(service: Service, session_ids: list[str], text: str) -> None:
    assert service.post_sessions([session(s) for s in session_ids]).status_code == 202
    for start in range(0, TASKS, 1000):
        answer = service.post_tasks([task(f"t{i}", "kept", target_text=text, context=f"{i} context " * 30)
                                     for i in range(start, start + 1000)])
        assert answer.status_code == 202
    assert service.flush().status_code == 200


def state(sink_url: str) -> tuple[set[str], Counter]:
    sessions = {r["session_id"] for r in sink_rows(sink_url, "translation_sessions", "session_id")}
    texts = Counter(r["target_text"] for r in sink_rows(sink_url, "translation_tasks", "target_text"))
    return sessions, texts


def killed_after(args: list[str], cwd: Path, delay: float, or_when: Path | None = None) -> int | None:
    """Run a command, kill -9 it after delay seconds (or as soon as or_when
    exists); its exit code when it ended before that."""
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and proc.poll() is None:
        if or_when is not None and or_when.exists():
            break
        if or_when is None:
            time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return None
    return proc.returncode


@pytest.mark.parametrize("sink", ["sqlite", "mysql"])
def test_kill_during_restore_leaves_the_old_state_or_the_new_one(sink: str, service_factory, tmp_path: Path,
                                                                 request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}" if sink == "sqlite" else request.getfixturevalue("mysql_url")
    service = service_factory(url)
    fill(service, ["kept"], "new")
    new_id = create(service)
    fill(service, ["after"], "old")
    old_id = create(service)
    service.stop()
    old = ({"kept", "after"}, Counter({"old": TASKS}))
    new = ({"kept"}, Counter({"new": TASKS}))
    assert state(url) == old

    started = time.monotonic()
    assert cli(service, "restore", new_id, "--force").returncode == 0
    duration = time.monotonic() - started
    assert state(url) == new
    outcomes: Counter = Counter()
    marker = service.spool_path.with_name("spool.db.restoring")
    # Kills at moments spread over the restore, then (None) as soon as the swap begins.
    for fraction in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, None, None, None):
        assert cli(service, "restore", old_id, "--force").returncode == 0
        assert state(url) == old
        delay = duration * (fraction or 3)
        ended = killed_after(cli_args(service, "restore", new_id, "--force"), service.folder, delay,
                             marker if fraction is None else None)
        if marker.exists():
            outcomes["interrupted while swapping"] += 1
            # The service refuses to start over a half-made restore...
            refused = subprocess.run([sys.executable, "-m", "core.cli", "--config", str(service.config), "run"],
                                     capture_output=True, text=True, timeout=60, cwd=service.folder)
            assert refused.returncode != 0 and "restore was interrupted" in refused.stdout + refused.stderr
            # ...another restore is refused, and the same one finishes it.
            other = cli(service, "restore", old_id, "--force")
            assert other.returncode == 1 and new_id in other.stderr
            assert cli(service, "restore", new_id).returncode == 0
            assert state(url) == new
        else:
            now = state(url)
            assert now in (old, new), now
            outcomes["old" if now == old else "new" if ended is None else "completed"] += 1
    print(f"restore {duration:.2f} s; outcomes of the kills: {dict(outcomes)}")
    assert outcomes["old"] >= 1  # some kills landed before the swap
    assert outcomes["interrupted while swapping"] >= 1  # and some while it swapped
    assert cli(service, "restore", new_id, "--force").returncode == 0
    service.start()
    assert service.flush().status_code == 200
    assert state(url) == new


def test_kill_during_backup_leaves_a_failed_backup_that_is_pruned(service_factory, tmp_path: Path) -> None:
    service = service_factory(f"sqlite:///{tmp_path / 'store.db'}")
    fill(service, ["kept"], "v")
    started = time.monotonic()
    first = create(service)
    duration = time.monotonic() - started
    backups = service.folder / "data" / "files" / "backups"
    interrupted = None
    for fraction in (0.6, 0.7, 0.8, 0.9, 0.95):
        before = {p.name for p in backups.iterdir()}
        if killed_after(cli_args(service, "create"), service.folder, duration * fraction) is not None:
            continue  # it finished first
        made = {p.name for p in backups.iterdir()} - before
        if made:
            interrupted = made.pop()
            break
    assert interrupted is not None, "no kill landed while a backup was being made"
    listed = {b["backup_id"]: b for b in json.loads(cli(service, "list", "--json").stdout)["items"]}
    assert listed[interrupted]["status"] == "failed"
    assert "interrupted" in listed[interrupted]["error"]
    assert cli(service, "verify", interrupted).returncode == 1
    latest = create(service)  # a new backup works, and the failed one older than it is pruned with its parts
    assert not (backups / interrupted).exists()
    assert {p.name for p in backups.iterdir()} == {first, latest}
    assert not [p for p in (service.folder / "backup-tmp").iterdir()]  # the killed one's copy is swept
