"""Files benchmark (Phase 2): upload and download throughput of the Files
API against the direct path to the same store, the service's RSS while a
large file goes up and down, and the latency of many small concurrent
uploads. SQLite sink; PASS/FAIL per goal.

    cd /work/main && .venv/bin/python -m loadtests.bench_files [--quick]

1. Throughput (MiB/s, median of the repetitions; every upload a different
   content, so dedup never makes one free): 1 MiB and 100 MiB files through
   port 8001 (the ingest relay to the query process) and through 8002 (the
   query process itself), against the direct path to the same store: for the
   local store a cp-like copy into the same filesystem (1 MiB writes, fsync,
   rename, fsync of the folder) and a read back; for S3 boto3's
   upload_fileobj and get_object against the same SeaweedFS. Goal: service
   via 8001 / direct >= 0.8 for each store, size and direction.
2. RSS of the service's processes (sampled every 0.2 s, plus each process's
   kernel peak VmHWM, reset before the transfer) while a 2 GiB file (200 MiB
   with --quick), generated on the fly by the client, goes up through 8001
   and comes back down (hashed, written to /dev/null, sha256 checked).
   Goal: the largest single service process stays under 150 MiB.
3. 200 concurrent small uploads (10 KiB, all different) through 8001 on the
   local store, closed loop: p50/p99 latency and uploads/s. Goal: p99 < 50 ms.

CPU per process (from /proc, % of one core; the machine has 2) is printed
for every path so a miss shows where the time goes. Bounded in time,
loopback only; the service, SeaweedFS and the temporary folder are removed at
the end, also on Ctrl-C, SIGTERM or an exception.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from boto3.s3.transfer import TransferConfig

from loadtests.loadgen import RawHttp
from loadtests.procstat import CpuWindow, proc_cpu_s, roles_of, status_kib, wait_quiet
from plugins.blobs.local import fsync_dir
from testkit.procs import descendants
from testkit.seaweed import SeaweedS3
from testkit.service import Service

MiB = 1024 * 1024
CHUNK = MiB  # what the clients send and read at a time
API = "/api/v1/files"
HOST = "127.0.0.1"
RATIO_GOAL = 0.8
RSS_GOAL_MIB = 150.0
P99_GOAL_MS = 50.0
SMALL_BYTES = 10 * 1024
MIN_CPU_WALL_S = 0.15
TIMEOUT = httpx.Timeout(600.0, connect=10.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reps-small", type=int, default=5, help="repetitions of the 1 MiB transfers")
    parser.add_argument("--reps-large", type=int, default=3, help="repetitions of the 100 MiB transfers")
    parser.add_argument("--large-mib", type=int, default=100)
    parser.add_argument("--big-mib", type=int, default=2048, help="the file of the RSS phase")
    parser.add_argument("--uploads", type=int, default=2000, help="timed small uploads")
    parser.add_argument("--concurrency", type=int, default=200, help="small uploads in flight")
    parser.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS rows")
    parser.add_argument("--wait-quiet", type=float, default=30.0,
                        help="wait at most this long before each phase for other jobs to leave the machine idle")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, a 200 MiB file, 600 small uploads")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps_small, args.reps_large, args.big_mib, args.uploads = 3, 2, 200, 600
        args.wait_quiet = min(args.wait_quiet, 10.0)
    return args


# -- CPU and RSS of the processes involved ---------------------------------------


class Cpu:
    """CPU seconds of each role (client = this process, ingest, query,
    flusher, supervisor, weed) so far, from /proc."""

    def __init__(self, service: Service, weed: SeaweedS3 | None = None) -> None:
        assert service.proc is not None
        self.pids: dict[str, list[int]] = {"client": [os.getpid()], **service.children(),
                                           "supervisor": [service.proc.pid]}
        if weed is not None and weed.proc is not None:
            self.pids["weed"] = [weed.proc.pid]

    def snapshot(self) -> dict[str, float]:
        return {role: sum(proc_cpu_s(pid) for pid in pids) for role, pids in self.pids.items()}


def cpu_text(cpu_s: dict[str, float], wall_s: float) -> str:
    """'query 95%, client 60%, ...' (% of one core over wall_s), biggest first."""
    parts = [(role, 100 * s / max(wall_s, 1e-9)) for role, s in cpu_s.items()]
    return ", ".join(f"{role} {pct:.0f}%" for role, pct in sorted(parts, key=lambda kv: -kv[1]) if pct >= 1) \
        or "-"


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (writing 5 to clear_refs); False when not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler:
    """VmRSS of every process of a tree every `interval` s, in a thread:
    the max of each process and of the tree's sum, per named phase."""

    def __init__(self, leader: int, interval: float = 0.2) -> None:
        self.leader = leader
        self.interval = interval
        self.phase = "idle"
        self.per_pid: dict[tuple[str, int], float] = {}  # (phase, pid) -> max MiB
        self.tree: dict[str, float] = {}  # phase -> max MiB of the sum
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        total = 0.0
        phase = self.phase
        for pid in [self.leader, *descendants(self.leader)]:
            mib = status_kib(pid, "VmRSS") / 1024
            total += mib
            key = (phase, pid)
            self.per_pid[key] = max(self.per_pid.get(key, 0.0), mib)
        self.tree[phase] = max(self.tree.get(phase, 0.0), total)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def by_phase(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for (phase, pid), mib in self.per_pid.items():
            out.setdefault(phase, {})[pid] = mib
        return out


def role_names(leader: int) -> dict[int, str]:
    return {pid: role for role, pids in roles_of(leader).items() for pid in pids}


# -- the paths a file takes ---------------------------------------------------------


def chunks(data: bytes) -> Iterator[bytes]:
    for at in range(0, len(data), CHUNK):
        yield data[at:at + CHUNK]


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache (they are clean after fsync): the next read is from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@dataclass
class Route:
    """One way to move a file: upload(name, data) -> handle, download(handle)
    -> (bytes read, sha256 the far side announced or None), remove(handle);
    evict(handle) empties the page cache of a local file (None: not local)."""

    label: str
    upload: Callable[[str, bytes], Any]
    download: Callable[[Any], tuple[int, str | None]]
    remove: Callable[[Any], None]
    is_service: bool
    evict: Callable[[Any], None] | None = None


def service_route(label: str, http: httpx.Client, base: str, store: Path | None = None) -> Route:
    """store: the local store's folder (its content is sha256/ab/<digest>), for evict."""
    def upload(name: str, data: bytes) -> dict[str, Any]:
        answer = http.post(f"{base}{API}", params={"filename": name}, content=chunks(data),
                           headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
        if answer.status_code != 201:
            raise RuntimeError(f"upload via {label}: {answer.status_code} {answer.text[:300]}")
        created: dict[str, Any] = answer.json()
        return created

    def download(created: dict[str, Any]) -> tuple[int, str | None]:
        size = 0
        with http.stream("GET", f"{base}{API}/{created['file_id']}/content") as answer:
            if answer.status_code != 200:
                raise RuntimeError(f"download via {label}: {answer.status_code}")
            for part in answer.iter_raw():
                size += len(part)
            etag = answer.headers.get("etag", "").strip('"')
        return size, etag

    def remove(created: dict[str, Any]) -> None:
        answer = http.delete(f"{base}{API}/{created['file_id']}")
        if answer.status_code != 200:
            raise RuntimeError(f"delete via {label}: {answer.status_code} {answer.text[:300]}")

    def evict_content(created: dict[str, Any]) -> None:
        assert store is not None
        evict(store / "sha256" / created["sha256"][:2] / created["sha256"])

    return Route(label, upload, download, remove, True, evict_content if store is not None else None)


def local_route(folder: Path) -> Route:
    folder.mkdir(parents=True, exist_ok=True)

    def upload(name: str, data: bytes) -> Path:
        temp, target = folder / f".{name}.tmp", folder / name
        with open(temp, "xb") as out:
            out.writelines(chunks(data))
            out.flush()
            os.fsync(out.fileno())
        os.rename(temp, target)
        fsync_dir(folder)
        return target

    def download(path: Path) -> tuple[int, str | None]:
        size = 0
        with open(path, "rb", buffering=0) as source:
            while part := source.read(CHUNK):
                size += len(part)
        return size, None

    return Route("direct: write+fsync+rename, read back", upload, download, lambda p: p.unlink(), False, evict)


def s3_route(client: Any, bucket: str) -> Route:
    config = TransferConfig()  # boto3's defaults: 8 MiB parts above 8 MiB, 10 threads

    def upload(name: str, data: bytes) -> str:
        key = f"direct/{name}"
        client.upload_fileobj(io.BytesIO(data), bucket, key, Config=config)
        return key

    def download(key: str) -> tuple[int, str | None]:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            return sum(len(part) for part in body.iter_chunks(CHUNK)), None
        finally:
            body.close()

    return Route("direct: boto3 upload_fileobj, get_object", upload, download,
                 lambda key: client.delete_object(Bucket=bucket, Key=key), False)


# -- 1. throughput --------------------------------------------------------------------


@dataclass
class Figures:
    """All repetitions of one route at one size."""

    store: str
    size: int
    route: str
    is_service: bool
    cold: bool
    up_s: list[float] = field(default_factory=list)
    down_s: list[float] = field(default_factory=list)
    up_cpu: dict[str, float] = field(default_factory=dict)
    down_cpu: dict[str, float] = field(default_factory=dict)

    def rate(self, seconds: list[float]) -> float:
        return self.size / MiB / statistics.median(seconds)

    @property
    def up(self) -> float:
        return self.rate(self.up_s)

    @property
    def down(self) -> float:
        return self.rate(self.down_s)

    @property
    def key(self) -> tuple[str, int, bool]:
        return self.store, self.size, self.cold

    @property
    def size_text(self) -> str:
        return size_label(self.size) + (" cold" if self.cold else "")

    def spread(self, seconds: list[float]) -> str:
        rates = sorted(self.size / MiB / s for s in seconds)
        return f"{rates[0]:.0f}-{rates[-1]:.0f}"


def _add(total: dict[str, float], before: dict[str, float], after: dict[str, float]) -> None:
    for role, cpu_s in after.items():
        total[role] = total.get(role, 0.0) + cpu_s - before.get(role, 0.0)


def throughput(store: str, routes: list[Route], size: int, reps: int, base: bytes, cpu: Cpu,
               cold: bool = False) -> list[Figures]:
    """Each repetition runs every route once (order rotated), each with its
    own content. cold: the stored file leaves the page cache before the download."""
    figures = [Figures(store, size, r.label, r.is_service, cold) for r in routes]
    for rep in range(reps):
        order = list(range(len(routes)))
        order = order[rep % len(order):] + order[:rep % len(order)]
        for index in order:
            route, fig = routes[index], figures[index]
            data = os.urandom(16) + base[16:size]
            sha = hashlib.sha256(data).hexdigest()
            name = f"{store}-{size // MiB}mib-{'cold-' if cold else ''}{rep}-{index}.bin"
            before = cpu.snapshot()
            started = time.perf_counter()
            handle = route.upload(name, data)
            uploaded = time.perf_counter()
            if cold:
                assert route.evict is not None
                route.evict(handle)
            middle = cpu.snapshot()
            started_down = time.perf_counter()
            got, etag = route.download(handle)
            done = time.perf_counter()
            _add(fig.down_cpu, middle, cpu.snapshot())
            _add(fig.up_cpu, before, middle)
            if route.is_service and (handle["sha256"] != sha or handle["size"] != size or etag != sha):
                raise RuntimeError(f"{route.label}: the service stored or served other bytes ({handle}, {etag})")
            if got != size:
                raise RuntimeError(f"{route.label}: downloaded {got} bytes of {size}")
            fig.up_s.append(uploaded - started)
            fig.down_s.append(done - started_down)
            route.remove(handle)
    return figures


# -- 2. RSS while a large file goes up and down -------------------------------------------


@dataclass
class RssResult:
    size: int
    up_s: float
    down_s: float
    roles: dict[int, str]
    idle: dict[int, float]  # pid -> MiB before the transfer
    per_phase: dict[str, dict[int, float]]  # phase -> pid -> max sampled MiB
    tree: dict[str, float]
    hwm: dict[int, float]  # pid -> VmHWM MiB since the reset
    reset_ok: bool
    samples: int
    up_cpu: str
    down_cpu: str

    @property
    def judged(self) -> tuple[int, float]:
        """The largest single service process: its sampled max or its kernel peak, whichever is higher."""
        candidates = [item for phase in ("upload", "download") for item in self.per_phase.get(phase, {}).items()]
        if self.reset_ok:
            candidates += list(self.hwm.items())
        return max(candidates, key=lambda kv: kv[1])


def big_body(size: int, digest: Any) -> Iterator[bytes]:
    """size bytes in 1 MiB chunks made on the fly (a random block, each chunk
    stamped with its number), hashed as they go; never held whole."""
    block = os.urandom(CHUNK)
    for number in range(size // CHUNK):
        chunk = number.to_bytes(8, "big") + block[8:]
        digest.update(chunk)
        yield chunk
    rest = size % CHUNK
    if rest:
        digest.update(block[:rest])
        yield block[:rest]


def rss_phase(service: Service, http: httpx.Client, size: int, cpu: Cpu) -> RssResult:
    assert service.proc is not None
    leader = service.proc.pid
    pids = [leader, *descendants(leader)]
    roles = role_names(leader)
    idle = {pid: status_kib(pid, "VmRSS") / 1024 for pid in pids}
    resets = [reset_peak_rss(pid) for pid in pids]  # every one, so no all() short cut
    reset_ok = all(resets)
    sampler = RssSampler(leader)
    sampler.start()
    sent = hashlib.sha256()
    try:
        sampler.phase = "upload"
        before = cpu.snapshot()
        started = time.perf_counter()
        answer = http.post(f"{API}", params={"filename": "big.bin"}, content=big_body(size, sent),
                           headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
        up_s = time.perf_counter() - started
        middle = cpu.snapshot()
        if answer.status_code != 201:
            raise RuntimeError(f"big upload: {answer.status_code} {answer.text[:300]}")
        created = answer.json()
        if created["sha256"] != sent.hexdigest() or created["size"] != size:
            raise RuntimeError(f"big upload: the service stored other bytes: {created}")
        sampler.sample()
        sampler.phase = "download"
        got = hashlib.sha256()
        count = 0
        started = time.perf_counter()
        with open(os.devnull, "wb") as sink, http.stream("GET", f"{API}/{created['file_id']}/content") as stream:
            if stream.status_code != 200:
                raise RuntimeError(f"big download: {stream.status_code}")
            for part in stream.iter_raw():
                got.update(part)
                sink.write(part)
                count += len(part)
        down_s = time.perf_counter() - started
        after = cpu.snapshot()
        sampler.sample()
    finally:
        sampler.stop()
    if count != size or got.hexdigest() != sent.hexdigest():
        raise RuntimeError(f"big download: {count} bytes, sha256 {got.hexdigest()} (sent {sent.hexdigest()})")
    http.delete(f"{API}/{created['file_id']}")
    up_cpu = {r: middle[r] - before[r] for r in before}
    down_cpu = {r: after[r] - middle[r] for r in middle}
    return RssResult(size, up_s, down_s, roles, idle, sampler.by_phase(),
                     sampler.tree, {pid: status_kib(pid, "VmHWM") / 1024 for pid in pids}, reset_ok,
                     sampler.samples, cpu_text(up_cpu, up_s), cpu_text(down_cpu, down_s))


# -- 3. many small uploads at once ------------------------------------------------------------


@dataclass
class SmallResult:
    latencies_ms: list[float]
    wall_s: float
    cpu: str
    one_at_a_time: dict[str, float] = field(default_factory=dict)  # yardsticks: path -> p50 ms

    def pct(self, q: float) -> float:
        values = self.latencies_ms
        return values[min(len(values) - 1, int(q * len(values)))]

    @property
    def per_s(self) -> float:
        return len(self.latencies_ms) / self.wall_s


def small_uploads(port: int, total: int, concurrency: int, groups: dict[str, list[int]]) -> SmallResult:
    """`concurrency` closed-loop clients (raw keep-alive sockets, so the
    client's CPU stays small), one warm-up upload each, then `total` timed."""
    base = os.urandom(SMALL_BYTES)
    bodies = [os.urandom(16) + base[16:] for _ in range(total + concurrency)]
    lock = threading.Lock()
    next_index = [0]
    latencies: list[float] = []
    failures: list[str] = []
    warmed = threading.Barrier(concurrency + 1)
    go = threading.Event()

    def head(index: int) -> bytes:
        return (f"POST {API}?filename=small-{index}.bin HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {SMALL_BYTES}\r\n\r\n").encode()

    def upload(conn: RawHttp, index: int) -> float:
        started = time.perf_counter()
        status, answer = conn.request(head(index), bodies[index])
        elapsed = (time.perf_counter() - started) * 1000
        if status != 201:
            failures.append(f"{status} {answer[:200]!r}")
        return elapsed

    def worker(number: int) -> None:
        conn = RawHttp(HOST, port, timeout=120)
        try:
            upload(conn, total + number)
        except Exception as exc:  # noqa: BLE001 - counted, reported below
            failures.append(repr(exc))
        warmed.wait()
        go.wait()
        mine = []
        while True:
            with lock:
                index = next_index[0]
                if index >= total:
                    break
                next_index[0] += 1
            try:
                mine.append(upload(conn, index))
            except Exception as exc:  # noqa: BLE001
                failures.append(repr(exc))
        conn.close()
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(concurrency)]
    for thread in pool:
        thread.start()
    warmed.wait()
    window = CpuWindow(groups)
    window.start()
    started = time.perf_counter()
    go.set()
    for thread in pool:
        thread.join()
    wall = time.perf_counter() - started
    window.stop()
    if failures:
        raise RuntimeError(f"{len(failures)} small uploads failed, first: {failures[0]}")
    return SmallResult(sorted(latencies), wall, window.line())


def direct_small_writes(folder: Path, count: int) -> float:
    """p50 ms of a 10 KiB write + fsync + rename + fsync of the folder, one at a time."""
    route = local_route(folder)
    times = []
    for n in range(count):
        data = os.urandom(SMALL_BYTES)
        started = time.perf_counter()
        path = route.upload(f"small-{n}.bin", data)
        times.append((time.perf_counter() - started) * 1000)
        path.unlink()
    return statistics.median(times)


# -- running it ------------------------------------------------------------------------------


class Cleanup:
    """What a run started, stopped and removed at the end whatever happens."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.services: list[Service] = []
        self.weeds: list[SeaweedS3] = []

    def close(self) -> None:
        for service in self.services:
            try:
                service.kill()
            except Exception as exc:  # noqa: BLE001 - the others must still go
                print(f"could not kill the service: {exc!r}")
        for weed in self.weeds:
            try:
                weed.kill()
            except Exception as exc:  # noqa: BLE001
                print(f"could not kill weed: {exc!r}")
        shutil.rmtree(self.folder, ignore_errors=True)


def start_service(cleanup: Cleanup, name: str, extra_toml: str) -> Service:
    folder = cleanup.folder / name
    service = Service(folder, f"sqlite:///{folder / 'store.db'}", extra_toml=extra_toml)
    cleanup.services.append(service)
    service.start()
    return service


def warm_up(route: Route) -> None:
    for n in range(4):  # both query workers see a request or two
        handle = route.upload(f"warm-{n}.bin", os.urandom(64 * 1024))
        route.download(handle)
        route.remove(handle)


def quiet(args: argparse.Namespace, what: str, ours: list[int]) -> None:
    text = wait_quiet(args.wait_quiet, ours)
    print(f"[{time.strftime('%H:%M:%S')}] {what}; machine before it: {text}", flush=True)


def tree_of(*leaders: int) -> list[int]:
    return [pid for leader in leaders for pid in (leader, *descendants(leader))]


def local_phases(args: argparse.Namespace, cleanup: Cleanup, base: bytes) -> tuple[list[Figures], RssResult,
                                                                                  SmallResult]:
    store = cleanup.folder / "local-store"
    service = start_service(cleanup, "svc-local", f'[files]\nurl = "file:///{store}"\n')
    assert service.proc is not None
    cpu = Cpu(service)
    with httpx.Client(base_url=f"http://{HOST}:{service.ingest_port}", timeout=TIMEOUT) as http:
        routes = [service_route("service via 8001 (relay)", http, f"http://{HOST}:{service.ingest_port}", store),
                  service_route("service via 8002 (query)", http, f"http://{HOST}:{service.query_port}", store),
                  local_route(cleanup.folder / "direct")]
        for route in routes:
            warm_up(route)
        quiet(args, "local store: throughput", tree_of(service.proc.pid))
        figures = throughput("local", routes, MiB, args.reps_small, base, cpu)
        figures += throughput("local", routes, args.large_mib * MiB, args.reps_large, base, cpu)
        figures += throughput("local", routes, args.large_mib * MiB, args.reps_large, base, cpu, cold=True)
        quiet(args, f"local store: RSS while {args.big_mib} MiB go up and down", tree_of(service.proc.pid))
        rss = rss_phase(service, http, args.big_mib * MiB, cpu)
    quiet(args, f"local store: {args.uploads} small uploads, {args.concurrency} at once", tree_of(service.proc.pid))
    small = small_uploads(service.ingest_port, args.uploads, args.concurrency, cpu.pids)
    # Yardsticks for the latency: the same upload one at a time, and what its fsyncs cost alone.
    for label, port in (("service via 8001, one at a time", service.ingest_port),
                        ("service via 8002, one at a time", service.query_port)):
        small.one_at_a_time[label] = small_uploads(port, 200, 1, cpu.pids).pct(.5)
    small.one_at_a_time["direct: write+fsync+rename+fsync dir"] = direct_small_writes(cleanup.folder / "direct", 200)
    service.kill()
    cleanup.services.remove(service)
    return figures, rss, small


def s3_phase(args: argparse.Namespace, cleanup: Cleanup, base: bytes) -> list[Figures]:
    weed = SeaweedS3(cleanup.folder / "weed", bucket="bench")
    cleanup.weeds.append(weed)
    weed.start()
    assert weed.proc is not None
    toml = (f'[files]\nurl = "s3://{weed.bucket}/svc?endpoint={weed.endpoint}"\n'
            f'access_key = "{weed.access_key}"\nsecret_key = "{weed.secret_key}"\n')
    service = start_service(cleanup, "svc-s3", toml)
    assert service.proc is not None
    cpu = Cpu(service, weed)
    client = weed.client()
    try:
        with httpx.Client(base_url=f"http://{HOST}:{service.ingest_port}", timeout=TIMEOUT) as http:
            routes = [service_route("service via 8001 (relay)", http, f"http://{HOST}:{service.ingest_port}"),
                      service_route("service via 8002 (query)", http, f"http://{HOST}:{service.query_port}"),
                      s3_route(client, weed.bucket)]
            for route in routes:
                warm_up(route)
            quiet(args, "S3 store (SeaweedFS): throughput", tree_of(service.proc.pid, weed.proc.pid))
            figures = throughput("s3", routes, MiB, args.reps_small, base, cpu)
            figures += throughput("s3", routes, args.large_mib * MiB, args.reps_large, base, cpu)
    finally:
        client.close()
    return figures


def size_label(size: int) -> str:
    return f"{size // MiB} MiB" if size < 1024 * MiB else f"{size / 1024 / MiB:g} GiB"


def report(figures: list[Figures], rss: RssResult, small: SmallResult, args: argparse.Namespace) -> int:
    print("\n1. throughput, MiB/s: median of the repetitions (min-max); ratio = service / direct")
    print(f"{'store':<6}{'size':>13}  {'path':<42}{'reps':>5}{'upload':>8}{'(range)':>13}"
          f"{'download':>10}{'(range)':>15}{'up x':>7}{'down x':>8}")
    direct = {f.key: f for f in figures if not f.is_service}
    for f in figures:
        d = direct[f.key]
        ratios = f"{f.up / d.up:>7.2f}{f.down / d.down:>8.2f}" if f.is_service else f"{'':>7}{'':>8}"
        print(f"{f.store:<6}{f.size_text:>13}  {f.route:<42}{len(f.up_s):>5}{f.up:>8.0f}"
              f"{'(' + f.spread(f.up_s) + ')':>13}{f.down:>10.0f}{'(' + f.spread(f.down_s) + ')':>15}{ratios}")
    print(f"('cold': the stored file is dropped from the page cache before the download; not a goal row)"
          f"\n\nCPU during the transfers, % of one core (2 cores = 200%); transfers shorter than "
          f"{MIN_CPU_WALL_S} s in all are left out: /proc counts CPU in 10 ms ticks")
    for f in figures:
        if sum(f.up_s) >= MIN_CPU_WALL_S or sum(f.down_s) >= MIN_CPU_WALL_S:
            up = cpu_text(f.up_cpu, sum(f.up_s)) if sum(f.up_s) >= MIN_CPU_WALL_S else "(too short)"
            down = cpu_text(f.down_cpu, sum(f.down_s)) if sum(f.down_s) >= MIN_CPU_WALL_S else "(too short)"
            print(f"{f.store:<6}{f.size_text:>13}  {f.route:<42}\n{'':<10}up:   {up}\n{'':<10}down: {down}")

    pid, judged = rss.judged
    print(f"\n2. service RSS, MiB, while {size_label(rss.size)} went up via 8001 ({rss.size / MiB / rss.up_s:.0f} MiB/s,"
          f" {rss.up_s:.1f} s) and down ({rss.size / MiB / rss.down_s:.0f} MiB/s, {rss.down_s:.1f} s), sha256 checked;"
          f" {rss.samples} samples")
    print(f"{'process':<26}{'pid':>8}{'idle':>8}{'max up':>9}{'max down':>10}{'VmHWM':>8}")
    for p, role in sorted(rss.roles.items(), key=lambda kv: kv[1]):
        max_up = rss.per_phase.get("upload", {}).get(p, 0.0)
        max_down = rss.per_phase.get("download", {}).get(p, 0.0)
        hwm = f"{rss.hwm.get(p, 0.0):>8.0f}" if rss.reset_ok else f"{'n/a':>8}"
        print(f"{role:<26}{p:>8}{rss.idle.get(p, 0.0):>8.0f}{max_up:>9.0f}{max_down:>10.0f}{hwm}")
    print(f"{'whole tree (sum)':<26}{'':>8}{sum(rss.idle.values()):>8.0f}{rss.tree.get('upload', 0):>9.0f}"
          f"{rss.tree.get('download', 0):>10.0f}")
    print(f"CPU up: {rss.up_cpu}\nCPU down: {rss.down_cpu}")

    print(f"\n3. {len(small.latencies_ms)} small uploads ({SMALL_BYTES // 1024} KiB, all different) via 8001, "
          f"{args.concurrency} in flight: p50 {small.pct(.5):.1f} ms, p95 {small.pct(.95):.1f} ms, "
          f"p99 {small.pct(.99):.1f} ms, max {small.latencies_ms[-1]:.1f} ms; {small.per_s:,.0f} uploads/s "
          f"({small.wall_s:.1f} s)\nCPU: {small.cpu}")
    for label, p50 in small.one_at_a_time.items():
        print(f"  yardstick, p50 of 200 {SMALL_BYTES // 1024} KiB uploads, {label}: {p50:.2f} ms")

    print("\ngoals")
    checks: list[tuple[str, bool, str]] = []
    for f in figures:
        if not f.is_service or "8001" not in f.route:
            continue
        d = direct[f.key]
        q = next(g for g in figures if g.key == f.key and "8002" in g.route)
        for way, mine, theirs, other in (("upload", f.up, d.up, q.up), ("download", f.down, d.down, q.down)):
            value = f"{mine / theirs:.2f}x ({mine:.0f} vs {theirs:.0f} MiB/s; via 8002 {other / theirs:.2f}x)"
            if f.cold:
                if way == "download":
                    print(f"  [info] {f.store} {f.size_text} download via 8001 / direct (not a goal): {value}")
                continue
            checks.append((f"{f.store} {f.size_text} {way} via 8001 >= {RATIO_GOAL}x direct",
                           mine / theirs >= RATIO_GOAL, value))
    rss_goal = (f"RSS of the largest single service process < {RSS_GOAL_MIB:.0f} MiB "
                f"({size_label(rss.size)} up and down; judged on max(sampled, VmHWM))")
    rss_value = f"{judged:.0f} MiB ({rss.roles.get(pid, '?')}); whole tree max {max(rss.tree.values()):.0f} MiB"
    checks.append((rss_goal, judged < RSS_GOAL_MIB, rss_value))
    small_value = f"{small.pct(.99):.1f} ms (p50 {small.pct(.5):.1f} ms, {small.per_s:,.0f}/s)"
    checks.append((f"p99 of {args.concurrency} concurrent 10 KiB uploads < {P99_GOAL_MS:.0f} ms",
                   small.pct(.99) < P99_GOAL_MS, small_value))
    failed = 0
    for label, ok, value in checks:
        failed += not ok
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}: {value}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    cleanup = Cleanup(Path(tempfile.mkdtemp(prefix="bench_files_")))

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        base = os.urandom(args.large_mib * MiB)
        figures, rss, small = local_phases(args, cleanup, base)
        if not args.no_s3:
            figures += s3_phase(args, cleanup, base)
        code = report(figures, rss, small, args)
    finally:
        cleanup.close()
        signal.signal(signal.SIGTERM, previous)
    print(f"\nrun took {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
