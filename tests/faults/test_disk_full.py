"""The spool on a small filesystem that fills up (a tmpfs; a loop-mounted ext4
image where tmpfs cannot be mounted; skipped, with the reason, where neither
can). spool.max_bytes is far larger than the filesystem, so the disk fills
before the spool's own limit and SQLite answers SQLITE_FULL.

What must hold:
* ingest answers 503 + Retry-After, error_code SPOOL_FULL, and accepts nothing
  of a refused batch; every batch that got 202 is in the spool, byte for byte;
  the file passes PRAGMA integrity_check, also after a kill -9 while full;
* once there is room again (the operator frees space, or the flusher drains
  the spool into the database) writes are accepted again and the database
  holds exactly what was acknowledged.

"Full" here means what ingest refuses at: it keeps the WAL's size plus 1 MiB
free (wal/spool.py, HEADROOM_MARGIN_BYTES), because the flusher can only free
space by checkpointing and trimming, which need some. Before that headroom,
a spool that filled its disk could never be trimmed (every commit_drain met
SQLITE_FULL) and the service could stop on its own (opening the spool failed).

The recovery tests use 24 MiB rather than a few: a checkpoint needs room in
the database file for what the WAL holds, so on a filesystem of a few MiB no
service could reclaim space once the WAL has filled it.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from testkit.mariadb import PrivateMariaDB
from testkit.load import Load, check_sink, flush_until_ok, running
from testkit.service import TASKS, Service, session, task, wait_for

MIB = 1024 * 1024
HUGE_SPOOL = 1024 * MIB  # spool.max_bytes: never the limit here
PAUSED = dict(max_delay=3600.0, batch_rows=100_000)  # the flusher drains only on POST /flush
FILL_TIMEOUT_S = 90.0
SMALL_FS_MIB = 24  # the recovery tests' filesystem (see the module's docstring)
RECOVERY_S = 20.0
OUTAGE_WHILE_FULL_S = 15.0  # the supervisor's crash-loop rule needs 10 restarts; each takes ~1 s


class SpoolNeverDrains(AssertionError):
    """The flusher could not trim the spool (nothing reached 'flushed') although it had time."""


class ServiceDied(AssertionError):
    """The supervisor exited on its own."""


class HealthSaysAccepting(AssertionError):
    """/health answered 200 while every write was refused."""


# -- a small filesystem ---------------------------------------------------------

@contextlib.contextmanager
def small_filesystem(folder: Path, size_mib: int) -> Iterator[Path]:
    """A filesystem of size_mib mounted on folder (tmpfs, else loop ext4),
    unmounted at the end; skips the test when neither can be mounted."""
    folder.mkdir(parents=True)
    problem = _mount(folder, size_mib)
    if problem:
        pytest.skip(f"cannot mount a small filesystem in this sandbox: {problem}")
    try:
        yield folder
    finally:
        _unmount(folder)


def _mount(folder: Path, size_mib: int) -> str | None:
    if shutil.which("mount") is None:
        return "no mount command"
    tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(folder)],
                           capture_output=True, text=True)
    if tmpfs.returncode == 0:
        return None
    image = folder.parent / f"{folder.name}.img"
    try:
        subprocess.run(["truncate", "-s", f"{size_mib}M", str(image)], check=True, capture_output=True)
        subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(folder)], check=True, capture_output=True)
        return None
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.decode(errors="replace").strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        return f"tmpfs: {tmpfs.stderr.strip()}; loop ext4: {detail}"


def _unmount(folder: Path) -> None:
    # The service's processes are killed before this; their files close within moments.
    deadline = time.monotonic() + 15
    while True:
        done = subprocess.run(["umount", str(folder)], capture_output=True, text=True)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # detach; freed when unused
            raise AssertionError(f"could not unmount {folder}: {done.stderr.strip()}")
        time.sleep(0.1)


# -- reading the spool file directly ----------------------------------------------

def _read_spool(path: Path) -> tuple[str, list[bytes]]:
    """(PRAGMA integrity_check, the entries' payloads in seq order), read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        check = "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check"))
        payloads = [row[0] for row in conn.execute("SELECT payload FROM entries ORDER BY seq")]
        return check, payloads
    finally:
        conn.close()


def _spooled_task_writes(path: Path) -> set[tuple[str, int]]:
    """(task_id, retry_count) of every task in the spool; a Load write is named by those two."""
    check, payloads = _read_spool(path)
    assert check == "ok", f"spool integrity_check: {check}"
    writes: set[tuple[str, int]] = set()
    for payload in payloads:
        body = msgspec.json.decode(payload)
        for item in body.get("tasks", []):
            writes.add((item["task_id"], item["retry_count"]))
    return writes


def _acked_writes(load: Load) -> set[tuple[str, int]]:
    return {(w.key, w.n) for history in load.writes.values() for w in history if w.acked}


def _fill(load: Load, service: Service) -> None:
    """Run the load until the spool refuses for a full disk; every refusal must be a 503."""
    load.start()
    try:
        wait_for(lambda: load.statuses[503] >= 3 or _exited(service), FILL_TIMEOUT_S,
                 f"503 for a full disk ({load.statuses})")
    finally:
        load.stop()
    if _exited(service):
        raise ServiceDied(f"the service exited while the disk filled:\n{service.tail(30)}")
    assert set(load.statuses) <= {202, 503}, f"answers other than 202/503: {load.statuses} {load.unexpected[:3]}"
    assert load.acked_records > 0, load.statuses


def _exited(service: Service) -> bool:
    return service.proc is not None and service.proc.poll() is not None


def _one_batch(number: int) -> bytes:
    tasks = [task(f"df-{number}-{i}", "df-s", source_text="x" * 200, row_index=i) for i in range(100)]
    return msgspec.json.encode({"tasks": tasks})


def _post_until_refused(service: Service) -> tuple[list[bytes], list[httpx.Response]]:
    """Post 100-task batches until three in a row are refused: (bodies that got 202, refusals)."""
    accepted: list[bytes] = []
    refused: list[httpx.Response] = []
    deadline = time.monotonic() + FILL_TIMEOUT_S
    number = 0
    while len(refused) < 3:
        assert time.monotonic() < deadline, f"no refusal after {number} batches"
        body = _one_batch(number)
        number += 1
        answer = service.http.post(TASKS, content=body, headers={"content-type": "application/json"})
        assert answer.status_code in (202, 503), answer.text
        if answer.status_code == 202:
            accepted.append(body)
            refused.clear()  # "three in a row"
        else:
            refused.append(answer)
    return accepted, refused


def _service_with_spool_on(folder: Path, spool: Path, sink_url: str, monkeypatch: pytest.MonkeyPatch,
                           **overrides: object) -> Service:
    # The harness writes `path = "spool.db"` in the service's folder; the environment
    # override moves the spool alone onto the small filesystem (config, logs and
    # metrics stay on the normal disk).
    monkeypatch.setenv("PS_SPOOL_PATH", str(spool))
    return Service(folder, sink_url, spool_max_bytes=HUGE_SPOOL, **overrides)


# -- the tests --------------------------------------------------------------------------

@pytest.mark.slow
def test_full_disk_refuses_whole_batches_and_keeps_the_spool_intact(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with small_filesystem(tmp_path / "small", 3) as small:
        spool = small / "spool.db"
        service = _service_with_spool_on(tmp_path / "svc", spool, f"sqlite:///{tmp_path / 'store.db'}",
                                         monkeypatch, **PAUSED)
        with running(service):
            assert service.post_sessions([session("df-s")]).status_code == 202
            flush_until_ok(service, 30)  # the session is in the sink and trimmed: the spool is empty
            accepted, refused = _post_until_refused(service)

            answer = refused[0]
            body = answer.json()
            assert body["error_code"] == "SPOOL_FULL" and "disk" in body["detail"], body
            assert int(answer.headers["retry-after"]) > 0, answer.headers
            stats = service.http.get("/health").json()["buffer"]
            assert stats["bytes"] < HUGE_SPOOL // 100, stats  # the disk was full, not the spool's limit
            assert len(accepted) >= 10, f"only {len(accepted)} batches fit on the filesystem"

            # Every acknowledged batch is in the spool exactly as sent, in order;
            # nothing of a refused one is.
            check, payloads = _read_spool(spool)
            assert check == "ok", check
            assert payloads == accepted, (len(payloads), len(accepted))

        # kill -9 (running() kills every process) while the disk is full: still intact.
        check, payloads = _read_spool(spool)
        assert check == "ok", check
        assert payloads == accepted, (len(payloads), len(accepted))


@pytest.mark.slow
def test_health_says_unhealthy_while_the_disk_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with small_filesystem(tmp_path / "small", 3) as small:
        service = _service_with_spool_on(tmp_path / "svc", small / "spool.db", f"sqlite:///{tmp_path / 'store.db'}",
                                         monkeypatch, **PAUSED)
        with running(service):
            assert service.post_sessions([session("df-s")]).status_code == 202
            flush_until_ok(service, 30)
            _post_until_refused(service)
            answer = service.http.get("/health")
            body = answer.json()
            if answer.status_code == 200:
                raise HealthSaysAccepting(f"/health: 200 {body}")
            assert answer.status_code == 503 and body["status"] == "unhealthy", body


@pytest.mark.slow
@pytest.mark.parametrize("freed_mib", [
    SMALL_FS_MIB // 2,  # the operator deletes a file that filled half of the disk
    0,  # nothing: the headroom ingest keeps is enough for the flusher to checkpoint and trim
])
def test_full_disk_recovers_after_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, freed_mib: int) -> None:
    """Fill the disk (the flusher paused), kill -9 the service, free freed_mib
    (0: nothing but what the flusher can trim), start it again with normal
    settings: it drains the spool, accepts writes, and the database holds
    exactly what was acknowledged."""
    sink_url = f"sqlite:///{tmp_path / 'store.db'}"
    with small_filesystem(tmp_path / "small", SMALL_FS_MIB) as small:
        spool = small / "spool.db"
        ballast = small / "ballast"
        ballast.write_bytes(b"\0" * freed_mib * MIB)
        first = _service_with_spool_on(tmp_path / "svc", spool, sink_url, monkeypatch, **PAUSED)
        with running(first):
            load = Load(first, tag="dfr", threads=2, batch=500)
            load.create_sessions()
            flush_until_ok(first, 30)
            _fill(load, first)
        # killed -9 with the disk full
        assert _spooled_task_writes(spool) == _acked_writes(load)  # nothing partial, nothing lost
        ballast.unlink()

        second = _service_with_spool_on(tmp_path / "svc", spool, sink_url, monkeypatch)
        with running(second):
            _drained(second, spool)
            more = Load(second, tag="dfm", threads=2, batch=500, max_tasks=2_000).start()
            more.join(60)
            assert more.statuses == {202: more.acked_requests}, f"writes refused after recovery: {more.statuses}"
            flush_until_ok(second, 60)
            check_sink(sink_url, load)
            check_sink(sink_url, more)
        check, _ = _read_spool(spool)
        assert check == "ok", check


@pytest.mark.slow
def test_full_disk_during_a_database_outage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            private_db: PrivateMariaDB) -> None:
    """The usual way a spool fills a disk: the database is down for long.
    The service stays up answering 503, and when the database is back the
    flusher drains the spool, writes are accepted again and the database
    holds exactly what was acknowledged."""
    sink_url = private_db.url("ps_disk_full")
    with small_filesystem(tmp_path / "small", SMALL_FS_MIB) as small:
        spool = small / "spool.db"
        service = _service_with_spool_on(tmp_path / "svc", spool, sink_url, monkeypatch)
        with running(service):
            load = Load(service, tag="dfo", threads=2, batch=500)
            load.create_sessions()
            flush_until_ok(service, 30)
            private_db.stop()
            _fill(load, service)
            assert _spooled_task_writes(spool) == _acked_writes(load)

            # The outage goes on with the disk full: the service must stay up.
            full_since = time.monotonic()
            while time.monotonic() - full_since < OUTAGE_WHILE_FULL_S:
                if _exited(service):
                    raise ServiceDied(f"the service exited {time.monotonic() - full_since:.1f} s after the "
                                      f"disk filled, database down:\n{service.tail(12)}")
                time.sleep(0.1)

            private_db.start()
            _drained(service, spool)
            more = Load(service, tag="dfp", threads=2, batch=500, max_tasks=2_000).start()
            more.join(60)
            assert more.statuses == {202: more.acked_requests}, f"writes refused after recovery: {more.statuses}"
            flush_until_ok(service, 60)
            check_sink(sink_url, load)
            check_sink(sink_url, more)


def _drained(service: Service, spool: Path) -> None:
    """POST /flush until 200 within RECOVERY_S, else SpoolNeverDrains (ServiceDied if it exited)."""
    deadline = time.monotonic() + RECOVERY_S
    last = ""
    while time.monotonic() < deadline:
        if _exited(service):
            raise ServiceDied(f"the service exited:\n{service.tail(12)}")
        try:
            answer = service.flush()
        except httpx.HTTPError as exc:
            last = repr(exc)
            time.sleep(0.2)
            continue
        if answer.status_code == 200:
            # As a client honouring Retry-After would: writes resume once the flusher has made room.
            wait_for(lambda: service.http.get("/health").status_code == 200, RECOVERY_S, "/health to say accepting")
            return
        last = f"{answer.status_code} {answer.text[:300]}"
    sizes = {p.name: p.stat().st_size for p in spool.parent.iterdir()}
    errors = [line[:300] for line in service.tail(400).splitlines() if '"level":"error"' in line][-2:]
    raise SpoolNeverDrains(f"POST /flush never answered 200 in {RECOVERY_S:g} s (last: {last}); "
                           f"files: {sizes}; free: {shutil.disk_usage(spool.parent).free} bytes; "
                           f"last errors: {errors}")
