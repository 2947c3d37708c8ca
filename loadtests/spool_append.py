"""Where the spool's ack-latency tail comes from, without HTTP: wal.Spool
append_many() timed directly, one 74 KB entry per call (one request of the
write benchmark), at a fixed rate, from one or two writer processes (one per
ingest worker), optionally with a third process that trims and checkpoints
as the flusher does.

    cd /work/main && .venv/bin/python -m loadtests.spool_append [--seconds 6] [--rate 320]

Variants (each on a fresh spool in /tmp; the lock wait is whatever
Spool.append_many() does in the code under test):
  - "autocheckpoint as coded": the spool's own pragmas (wal/schema.py);
  - autocheckpoint 1000 (SQLite's default): a commit that grows the WAL past
    4 MB checkpoints inline;
  - autocheckpoint 0: no checkpoint inside a commit (the WAL just grows);
  - flock: the writers queue on a blocking flock() around the transaction;
  - trimmer: a third process, every 60 ms, reads up to 1000 records, trims them
    with commit_drain() and, when the Spool has checkpoint(), checkpoints:
    the flusher's spool work at ~16,000 rows/s, without the database ("no
    checkpoints": the same without the checkpoint).
PRAGMAs are set on the Spool's own connection (a private attribute): this
is an experiment, not a use of the API.
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from typing import Any, Literal

from msgspec import Struct

from core.settings import SpoolSettings
from loadtests.bodies import split_template, stamp, task_templates
from wal import Spool
from wal.spool import Append, DrainCommit

KIND_TASKS = 2
TRIM_EVERY_S = 0.06


class Variant(Struct, frozen=True):
    label: str
    sync: Literal["full", "normal"]
    writers: int
    autocheckpoint: int | None = None  # None: leave the spool's own setting
    use_flock: bool = False
    trimmer: bool = False
    checkpoints: bool = True  # the trimmer checkpoints after each trim (when the Spool can)


VARIANTS = [
    Variant("1 writer, full, autocheckpoint 1000", "full", 1, 1000),
    Variant("1 writer, normal, autocheckpoint 1000", "normal", 1, 1000),
    Variant("1 writer, normal, autocheckpoint 0", "normal", 1, 0),
    Variant("2 writers, full, autocheckpoint 1000", "full", 2, 1000),
    Variant("2 writers, full, autocheckpoint 1000, flock", "full", 2, 1000, use_flock=True),
    Variant("2 writers, full, autocheckpoint as coded", "full", 2),
    Variant("2 writers, full, as coded, + trimmer", "full", 2, trimmer=True),
    Variant("2 writers, full, as coded, + trimmer, no checkpoints", "full", 2, trimmer=True, checkpoints=False),
    Variant("2 writers, normal, as coded, + trimmer", "normal", 2, trimmer=True),
]


def _open(path: str, variant: Variant) -> Spool:
    spool = Spool.open(SpoolSettings(path=path, sync=variant.sync, max_bytes=1 << 40))
    if variant.autocheckpoint is not None:
        spool._conn.execute(f"PRAGMA wal_autocheckpoint = {variant.autocheckpoint}")  # noqa: SLF001
    return spool


def _writer(path: str, variant: Variant, rate: float, seconds: float, out: Any) -> None:
    bodies = [stamp(split_template(t), 1) for t in task_templates("sp", 8)]
    spool = _open(path, variant)
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT)
    latencies = []
    due = time.monotonic()
    end = due + seconds
    i = 0
    while due < end:
        time.sleep(max(0.0, due - time.monotonic()))
        t0 = time.perf_counter()
        if variant.use_flock:
            fcntl.flock(lock, fcntl.LOCK_EX)
        spool.append_many([Append(KIND_TASKS, bodies[i % len(bodies)], 100)])
        if variant.use_flock:
            fcntl.flock(lock, fcntl.LOCK_UN)
        latencies.append((time.perf_counter() - t0) * 1000)
        i += 1
        due += 1 / rate
    spool.close()
    out.put(latencies)


def _trimmer(path: str, variant: Variant, seconds: float) -> None:
    spool = _open(path, variant)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        entries = spool.read(0, 1000)
        if entries:
            spool.commit_drain(DrainCommit(through_seq=entries[-1].seq,
                                           tasks_written=sum(e.record_count for e in entries)))
            if variant.checkpoints and hasattr(spool, "checkpoint"):
                spool.checkpoint()
        time.sleep(TRIM_EVERY_S)
    spool.close()


def run_variant(variant: Variant, rate: float, seconds: float) -> list[float]:
    folder = tempfile.mkdtemp(prefix="spool_append_")
    path = os.path.join(folder, "spool.db")
    try:
        Spool.open(SpoolSettings(path=path, sync=variant.sync)).close()
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(path, variant, rate / variant.writers, seconds, out))
                 for _ in range(variant.writers)]
        if variant.trimmer:
            procs.append(ctx.Process(target=_trimmer, args=(path, variant, seconds)))
        for p in procs:
            p.start()
        latencies = sorted(v for _ in range(variant.writers) for v in out.get(timeout=seconds + 60))
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        return latencies
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rate", type=float, default=320.0, help="appends/s in all (320 = 32,000 rows/s)")
    args = parser.parse_args()
    print(f"append_many() of one 74 KB entry, {args.rate:.0f}/s in all, {args.seconds:.0f} s; latency in ms")
    print(f"{'variant':<56}{'p50':>7}{'p90':>7}{'p99':>7}{'p99.9':>8}{'max':>8}{'> 5 ms':>8}")
    for variant in VARIANTS:
        lat = run_variant(variant, args.rate, args.seconds)
        n = len(lat)
        slow = sum(v > 5 for v in lat)
        print(f"{variant.label:<56}{lat[n // 2]:7.2f}{lat[int(n * .9)]:7.2f}{lat[int(n * .99)]:7.2f}"
              f"{lat[int(n * .999)]:8.2f}{lat[-1]:8.1f}{100 * slow / n:7.1f}%")


if __name__ == "__main__":
    main()
