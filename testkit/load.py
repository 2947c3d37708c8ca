"""Write load with an exact record of what was acknowledged, and the check
that the sink holds exactly that.

A load thread owns its keys and posts sequentially, so for one key the order
of its writes is the order they were sent. Every write of a key is unique
(target_text = "<task_id>#<n>", retry_count = n), so the stored row names the
write it came from. Keys come in three kinds:

* "e": explicit `updated_at` in 2024, increasing with n, except every fifth
  write which is stale (older than the one before it);
* "i": no `updated_at`: the version is the acceptance time, so the last
  acknowledged write wins;
* "m": mixed: explicit 2024 (older than any acceptance time), implicit, explicit
  2024 again (stale: must lose to the implicit one), explicit 2031 (newer than
  any acceptance time: the implicit writes after it are stale).

Sessions are written the same way when `session_updates` is set: each load
thread owns some sessions and, after that share of its task batches, rewrites
them (completed_tasks = n, file_path = "/<session_id>#<n>"), with the mixed
plan ("m") of versions; the batch that creates them is write #0.

The oracle per key: among the acknowledged writes the one with the highest
version must be stored, unless a write that was not acknowledged (its
connection broke: it may or may not be stored) carries a higher version.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec

from testkit.procs import is_alive, state_and_parent
from testkit.service import SESSIONS, TASKS, Service, session, sink_rows, task, wait_for

STATUSES = ("pending", "processing", "completed", "failed")
SESSION_STATUSES = ("processing", "pending", "completed", "failed", "cancelled")
PAST = datetime(2024, 1, 1, tzinfo=UTC)
FUTURE = datetime(2031, 1, 1, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# An implicit version is taken inside the request; allow for clock granularity.
CLOCK_SLACK_US = 5_000
HOT_KEYS = 100  # per load thread
SERVICE_GONE_S = 10.0  # a load thread gives up this long after the service process exited
_ENCODE = msgspec.json.encode
_JSON = {"content-type": "application/json"}


def _us(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z")


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Write:
    """One write of one key, as the client sent it."""
    key: str
    n: int
    session_id: str
    status: str
    version: int | None  # explicit updated_at in us; None = acceptance time
    sent_us: int = 0
    done_us: int = 0
    acked: bool = False

    @property
    def lower(self) -> int:
        """The lowest version this write can have."""
        return self.version if self.version is not None else self.sent_us - CLOCK_SLACK_US

    @property
    def upper(self) -> int:
        """The highest version this write can have (unknown end for a broken request)."""
        if self.version is not None:
            return self.version
        return (self.done_us if self.acked else 2**62) + CLOCK_SLACK_US


def _plan(key: str, n: int) -> tuple[int | None, str]:
    """(explicit version or None, status) of write n of a key."""
    kind = key.split("-")[1]
    status = STATUSES[n % len(STATUSES)]
    if kind == "e":
        seconds = n * 10 - (25 if n % 5 == 4 else 0)
        return _us(PAST + timedelta(seconds=seconds)), status
    if kind == "i":
        return None, status
    step = n % 4
    if step == 1:
        return None, status
    if step == 3:
        return _us(FUTURE + timedelta(seconds=n * 10)), status
    return _us(PAST + timedelta(seconds=n * 10)), status


@dataclass
class Load:
    """Background threads posting task batches to one service."""
    service: Service
    tag: str = "L"
    threads: int = 3
    batch: int = 250
    sessions: int = 20
    rewrite_share: float = 0.4
    max_tasks: int | None = None  # per thread; None = until stop()
    pause: float = 0.0  # seconds between a thread's requests
    session_updates: float = 0.0  # share of task batches after which a thread rewrites its sessions
    writes: dict[str, list[Write]] = field(default_factory=dict)
    session_writes: dict[str, list[Write]] = field(default_factory=dict)
    session_ids: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)  # HTTP status or exception name -> requests
    acked_requests: int = 0  # task batches
    acked_records: int = 0  # task records
    acked_session_requests: int = 0  # session batches, the one that creates them included
    acked_session_records: int = 0
    failed_requests: int = 0
    unexpected: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    # -- driving --------------------------------------------------------------

    def create_sessions(self) -> None:
        self.session_ids = [f"{self.tag}-s{i}" for i in range(self.sessions)]
        with httpx.Client(timeout=60) as client:
            outcome = self._post_sessions(client, self.session_ids, first=True)
        assert outcome == 202, outcome

    def start(self) -> Load:
        if not self.session_ids:
            self.create_sessions()
        for number in range(self.threads):
            worker = threading.Thread(target=self._run, args=(number,), daemon=True,
                                      name=f"load-{self.tag}-{number}")
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self, timeout: float = 90) -> None:
        self._stop.set()
        self.join(timeout)

    def join(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.1, deadline - time.monotonic()))
            assert not worker.is_alive(), f"{worker.name} did not finish (a request hangs?)"

    def wait_acked(self, records: int, timeout: float) -> None:
        """Wait until at least this many task records have been acknowledged in total."""
        wait_for(lambda: self.acked_records >= records, timeout,
                 f"{records} acknowledged task records (have {self.acked_records}, {self.statuses})")

    def attempts(self) -> int:
        """Requests answered or failed so far."""
        with self._lock:
            return sum(self.statuses.values())

    def wait_attempts(self, more: int, timeout: float) -> None:
        """Wait until the threads have made this many more requests (e.g. to
        observe that nothing is acknowledged any more)."""
        target = self.attempts() + more
        wait_for(lambda: self.attempts() >= target, timeout, f"{more} more requests ({self.statuses})")

    def _run(self, number: int) -> None:
        rng = random.Random(f"{self.tag}-{number}")
        kinds = "eim"
        made: list[str] = []
        posted = 0
        url = f"http://127.0.0.1:{self.service.ingest_port}{TASKS}"
        dead_since = 0.0
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set() and (self.max_tasks is None or posted < self.max_tasks):
                if self.service.proc is not None and self.service.proc.poll() is not None:
                    # The service has exited (a test failed, or it was killed on purpose):
                    # keep trying briefly, as a client would, then stop spinning.
                    dead_since = dead_since or time.monotonic()
                    if time.monotonic() - dead_since > SERVICE_GONE_S:
                        return
                else:
                    dead_since = 0.0  # it was started again
                keys: set[str] = set()
                rewrites = min(int(self.batch * self.rewrite_share), len(made))
                while len(keys) < rewrites:
                    # Half of the rewrites hit a small hot set, so that some keys see
                    # dozens of writes (stale ones included), the rest any key.
                    keys.add(rng.choice(made[:HOT_KEYS] if rng.random() < 0.5 else made))
                while len(keys) < self.batch:
                    key = f"{self.tag}-{kinds[len(made) % 3]}-t{number}-{len(made)}"
                    made.append(key)
                    keys.add(key)
                posted += len(keys)
                self._post(client, url, sorted(keys))
                owned = self.session_ids[number::self.threads]
                if owned and rng.random() < self.session_updates:
                    self._post_sessions(client, owned)
                if self.pause:
                    self._stop.wait(self.pause)

    def _post(self, client: httpx.Client, url: str, keys: list[str]) -> None:
        batch: list[Write] = []
        records = []
        for key in keys:
            history = self.writes.setdefault(key, [])  # only this thread touches this key
            n = len(history)
            version, status = _plan(key, n)
            session_id = self.session_ids[zlib.crc32(key.encode()) % len(self.session_ids)]
            write = Write(key, n, session_id, status, version)
            history.append(write)
            batch.append(write)
            fields: dict[str, Any] = {"target_text": f"{key}#{n}", "retry_count": n}
            if version is not None:
                fields["updated_at"] = _iso(_EPOCH + timedelta(microseconds=version))
            records.append(task(key, session_id, status=status, row_index=n, **fields))
        body = _ENCODE({"tasks": records})
        sent = now_us()
        for write in batch:
            write.sent_us = sent
        try:
            answer = client.post(url, content=body, headers=_JSON)
            outcome: int | str = answer.status_code
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        done = now_us()
        acked = outcome == 202
        for write in batch:
            write.done_us = done
            write.acked = acked
        with self._lock:
            self.statuses[outcome] += 1
            if acked:
                self.acked_requests += 1
                self.acked_records += len(batch)
            else:
                self.failed_requests += 1
                if outcome not in (503, 429) and isinstance(outcome, int):
                    self.unexpected.append(f"{outcome}: {answer.text[:300]}")
        if not acked:
            time.sleep(0.05)  # do not spin on a refusing service

    def _post_sessions(self, client: httpx.Client, session_ids: list[str], first: bool = False) -> int | str:
        """Write these sessions once more (only their owner thread does, so the
        order of a session's writes is the order they were sent)."""
        batch: list[Write] = []
        records = []
        for sid in session_ids:
            history = self.session_writes.setdefault(sid, [])
            n = len(history)
            version, _ = (None, "") if first else _plan(f"{self.tag}-m-{sid}", n)
            write = Write(sid, n, sid, SESSION_STATUSES[n % len(SESSION_STATUSES)], version)
            history.append(write)
            batch.append(write)
            fields: dict[str, Any] = {"completed_tasks": n, "file_path": f"/{sid}#{n}", "status": write.status}
            if version is not None:
                fields["updated_at"] = _iso(_EPOCH + timedelta(microseconds=version))
            records.append(session(sid, **fields))
        sent = now_us()
        try:
            answer = client.post(f"http://127.0.0.1:{self.service.ingest_port}{SESSIONS}",
                                 content=_ENCODE({"sessions": records}), headers=_JSON)
            outcome: int | str = answer.status_code
            if outcome != 202:
                outcome = f"{outcome} {answer.text[:300]}" if first else outcome
        except httpx.HTTPError as exc:
            outcome = f"{type(exc).__name__}: {exc}" if first else type(exc).__name__
        done = now_us()
        for write in batch:
            write.sent_us, write.done_us, write.acked = sent, done, outcome == 202
        with self._lock:
            if outcome == 202:
                self.acked_session_requests += 1
                self.acked_session_records += len(batch)
        return outcome

    # -- the oracle -------------------------------------------------------------

    def acked_sent_after(self, when_us: int) -> int:
        """Acknowledged writes whose request was sent after this time (now_us())."""
        return sum(1 for h in self.writes.values() for w in h if w.acked and w.sent_us > when_us)

    def acked_keys(self) -> set[str]:
        return {key for key, history in self.writes.items() if any(w.acked for w in history)}


def db_us(value: Any) -> int:
    """A sink DATETIME(6) (MySQL: datetime; SQLite: text) as UTC microseconds."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return _us(value)


def check_sink(sink_url: str, load: Load) -> dict[str, int]:
    """Assert the sink holds every acknowledged record at its last acknowledged
    version, nothing twice, nothing that was never sent. Returns counters."""
    rows = sink_rows(sink_url, "translation_tasks",
                     "task_id, session_id, status, target_text, retry_count, updated_at")
    mine = [r for r in rows if r["task_id"].startswith(f"{load.tag}-")]
    stored: dict[str, dict] = {}
    errors: list[str] = []
    for row in mine:
        if row["task_id"] in stored:
            errors.append(f"{row['task_id']}: stored twice")
        stored[row["task_id"]] = row
    acked = load.acked_keys()
    counts: Counter[str] = Counter()
    for key, history in load.writes.items():
        found = stored.get(key)
        best = max((w for w in history if w.acked), key=lambda w: w.lower, default=None)
        if found is None:
            if best is not None:
                errors.append(f"{key}: missing (acknowledged write #{best.n})")
            continue
        error = _check_row(key, history, best, found)
        if error:
            errors.append(error)
        counts["newer_unacked" if best is not None and found["retry_count"] != best.n else "ok"] += 1
    for key in stored.keys() - load.writes.keys():
        errors.append(f"{key}: stored but never sent")
    present = sum(1 for key in acked if key in stored)
    if present != len(acked):
        errors.append(f"{len(acked)} acknowledged task ids, {present} of them stored")
    errors.extend(_check_sessions(sink_url, load, counts))
    assert not errors, f"{len(errors)} problems in the sink, e.g.:\n" + "\n".join(errors[:25])
    counts.update(acked_keys=len(acked), stored=len(mine),
                  acked_writes=sum(w.acked for h in load.writes.values() for w in h),
                  unacked_writes=sum(not w.acked for h in load.writes.values() for w in h))
    return dict(counts)


def _check_sessions(sink_url: str, load: Load, counts: Counter[str]) -> list[str]:
    """Every session at its last acknowledged version, as for tasks."""
    rows = {r["session_id"]: r for r in sink_rows(
        sink_url, "translation_sessions", "session_id, status, file_path, completed_tasks, updated_at")}
    errors = []
    for sid, history in load.session_writes.items():
        best = max((w for w in history if w.acked), key=lambda w: w.lower, default=None)
        row = rows.get(sid)
        if row is None:
            if best is not None:
                errors.append(f"session {sid}: missing (acknowledged write #{best.n})")
            continue
        n = row["completed_tasks"]
        error = _judge(f"session {sid}", history, best, n, row,
                       lambda w: row["file_path"] == f"/{sid}#{w.n}" and row["status"] == w.status)
        if error:
            errors.append(error)
        counts["sessions_checked"] += 1
        counts["session_writes_acked"] += sum(w.acked for w in history)
    return errors


def _check_row(key: str, history: list[Write], best: Write | None, row: dict) -> str | None:
    return _judge(key, history, best, row["retry_count"], row,
                  lambda w: (row["target_text"], row["status"], row["session_id"])
                  == (f"{key}#{w.n}", w.status, w.session_id))


def _judge(key: str, history: list[Write], best: Write | None, n: int, row: dict,
           fields_of: Any) -> str | None:
    """The stored row names write #n: it must carry that write's fields and
    version, and no acknowledged write with a higher version may exist."""
    if not 0 <= n < len(history):
        return f"{key}: stored write number {n} names no write (sent {len(history)})"
    write = history[n]
    version = db_us(row["updated_at"])
    where = f"{key}: stored write #{n} ({'acked' if write.acked else 'not acked'})"
    if not fields_of(write):
        return f"{where} has fields of no single write: {row}"
    if not write.lower <= version <= write.upper:
        return f"{where}: version {version} outside [{write.lower}, {write.upper}]"
    if best is None or write is best:
        return None
    if write.acked:
        return (f"{where} but acknowledged write #{best.n} has a higher version "
                f"({best.lower} > {version}): a stale write won")
    # A write whose connection broke may be stored; it may win only with a higher version.
    if version <= best.lower:
        return (f"{where} with version {version} over acknowledged write #{best.n} "
                f"(version >= {best.lower})")
    return None


# -- service helpers ------------------------------------------------------------

def health(service: Service) -> tuple[int, dict]:
    answer = service.http.get("/health")
    return answer.status_code, answer.json()


def flush_until_ok(service: Service, timeout: float) -> httpx.Response:
    """POST /flush until it answers 200 (each call waits up to flush_timeout)."""
    def attempt() -> httpx.Response | None:
        answer = service.flush()
        return answer if answer.status_code == 200 else None
    return wait_for(attempt, timeout, "POST /flush to answer 200", interval=0.2)


def spool_state(service: Service) -> dict[str, int]:
    """The spool file read directly, as an operator would: entries waiting,
    records waiting, and how far the flusher has committed (flushed_seq)."""
    conn = sqlite3.connect(service.spool_path, timeout=30)
    try:
        entries, records = conn.execute("SELECT count(*), coalesce(sum(record_count), 0) FROM entries").fetchone()
        flushed = conn.execute("SELECT flushed_seq FROM state").fetchone()[0]
        return {"entries": entries, "records": records, "flushed_seq": flushed}
    finally:
        conn.close()


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    """Start a service built by hand (e.g. a second one on the same folder) and
    kill whatever is left of it at the end."""
    try:
        service.start()
        yield service
    finally:
        service.kill()


def pause_flusher(service: Service, timeout: float = 10) -> int:
    """SIGSTOP the flusher at a moment it holds no spool write lock (stopped
    inside a transaction it would block every append), and return its pid.
    The caller SIGCONTs it."""
    pid = only_flusher(service)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        os.kill(pid, signal.SIGSTOP)
        probe = sqlite3.connect(service.spool_path, timeout=0.2, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return pid
        except sqlite3.OperationalError:  # stopped mid-transaction: let it finish, try again
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.01)
        finally:
            probe.close()
    raise AssertionError(f"could not pause flusher {pid} outside a spool write within {timeout} s")


def only_flusher(service: Service, not_pid: int = 0, timeout: float = 30) -> int:
    """The pid of the one running flusher (other than not_pid), waiting for a restart."""
    def find() -> int | None:
        pids = [p for p in service.children()["flusher"] if p != not_pid and is_alive(p)]
        return pids[0] if len(pids) == 1 else None
    return wait_for(find, timeout, f"a flusher other than pid {not_pid}")


def granian_main(service: Service) -> int:
    """The granian main process of ingest (the supervisor's own child); 0 while
    there is not exactly one."""
    assert service.proc is not None
    mains = [pid for pid in service.children()["ingest"] if state_and_parent(pid)[1] == str(service.proc.pid)]
    return int(mains[0]) if len(mains) == 1 else 0


def granian_workers(service: Service) -> list[int]:
    """The ingest worker pids: the children of granian main processes."""
    assert service.proc is not None
    return [pid for pid in service.children()["ingest"] if state_and_parent(pid)[1] not in ("", str(service.proc.pid))]
