"""persistence_client against a hand-written loop: one process putting task
updates as fast as the service acknowledges them.

    .venv/bin/python -m loadtests.bench_client [--rows 1000000] [--keys 50000] [--repeats 1]

One service (SQLite sink, production flush settings) serves every run; each
run is its own process, so its CPU (user + system, every thread) is its own,
and the spool is drained between runs so none starts behind another's
backlog. Runs go in rounds (every variant once per round) so a noisy minute
hits them all alike; the figures are the medians.

- `client`: PersistenceClient, `client.tasks.put(task)` of Task Structs
  (msgspec.structs.replace of a template per update), then `flush()`;
- `client-dict`: the same with plain dicts;
- `client-coalesce`: as `client` with `coalesce=True` (an update still queued
  is replaced by a later one of the same task): shown, not a goal;
- `urllib3`: what a backend writes by hand: dicts, `json.dumps` of 100-task
  batches, urllib3 POST, waiting out 429/503 by Retry-After.

Prints rows/s acknowledged (first put to the last 202) and client CPU ms per
1000 rows; goal: the client >= 1.5x the loop's rows/s at less CPU per row.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from loadtests.bench_service import HOST, Reaper, ServiceProc
from loadtests.bodies import session_record, task_record
from persistence_api.translation import Task

SESSION_ID = "bench-client"
TEMPLATES = 1000
STATUSES = ("pending", "processing", "completed")


def templates() -> list[dict[str, Any]]:
    rng = random.Random(7)
    return [task_record(f"tpl-{i}", SESSION_ID, i, rng) for i in range(TEMPLATES)]


def update(number: int, keys: int, base: dict[str, Any]) -> dict[str, Any]:
    """The number-th update: task number % keys, its status moving on."""
    key = number % keys
    return {**base, "task_id": f"t-{key:07d}", "row_index": key, "status": STATUSES[(number // keys) % 3]}


# -- the variants (each runs in its own process) -----------------------------------

def run_client(url: str, rows: int, keys: int, as_dicts: bool, coalesce: bool = False) -> dict[str, Any]:
    from persistence_client import PersistenceClient
    bases = templates()
    structs = [msgspec.convert(b, Task) for b in bases]
    client = PersistenceClient(url, coalesce=coalesce)
    started, cpu = time.perf_counter(), _cpu()
    if as_dicts:
        for n in range(rows):
            client.tasks.put(update(n, keys, bases[n % TEMPLATES]), wait=60)
    else:
        for n in range(rows):
            key = n % keys
            client.tasks.put(msgspec.structs.replace(structs[n % TEMPLATES], task_id=f"t-{key:07d}", row_index=key,
                                                     status=STATUSES[(n // keys) % 3]), wait=60)
    client.flush()
    elapsed, used = time.perf_counter() - started, _cpu() - cpu
    stats = client.stats
    client.close()
    assert stats.acknowledged + stats.coalesced == rows, stats
    return {"rows": rows, "seconds": elapsed, "cpu": used, "requests": stats.requests, "retries": stats.retries,
            "coalesced": stats.coalesced}


def run_urllib3(url: str, rows: int, keys: int) -> dict[str, Any]:
    import urllib3
    bases = templates()
    http = urllib3.PoolManager(maxsize=1)
    path = url + "/api/v1/translation/tasks/batch"
    started, cpu = time.perf_counter(), _cpu()
    requests = retries = 0
    for first in range(0, rows, 100):
        batch = [update(n, keys, bases[n % TEMPLATES]) for n in range(first, min(rows, first + 100))]
        body = json.dumps({"tasks": batch}).encode()
        while True:
            requests += 1
            answer = http.request("POST", path, body=body, headers={"content-type": "application/json"},
                                  retries=False)
            if answer.status == 202:
                break
            if answer.status not in (429, 503):
                raise RuntimeError(f"{answer.status}: {answer.data[:300]!r}")
            retries += 1
            time.sleep(float(answer.headers.get("retry-after", "1")))
    elapsed, used = time.perf_counter() - started, _cpu() - cpu
    return {"rows": rows, "seconds": elapsed, "cpu": used, "requests": requests, "retries": retries}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


VARIANTS = ("urllib3", "client", "client-dict", "client-coalesce")


def one_run(variant: str, url: str, rows: int, keys: int) -> dict[str, Any]:
    """Run a variant in a process of its own and read its figures."""
    done = subprocess.run([sys.executable, "-m", "loadtests.bench_client", "--run", variant, "--url", url,
                           "--rows", str(rows), "--keys", str(keys)],
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=50_000, help="distinct tasks the updates cycle over")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every variant")
    parser.add_argument("--run", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        figures = (run_urllib3(args.url, args.rows, args.keys) if args.run == "urllib3"
                   else run_client(args.url, args.rows, args.keys, as_dicts=args.run == "client-dict",
                                   coalesce=args.run == "client-coalesce"))
        print(json.dumps(figures))
        return

    reaper = Reaper()
    folder = Path(tempfile.mkdtemp(prefix="bench-client-"))
    reaper.folder = folder
    try:
        service = ServiceProc(reaper, folder / "svc", f"sqlite:///{folder / 'store.db'}", sync="full", workers=2)
        service.start()
        service.wait_ready(need_database=True)
        url = f"http://{HOST}:{service.ingest_port}"
        import urllib3
        urllib3.request("POST", url + "/api/v1/translation/sessions/batch",
                        body=json.dumps({"sessions": [session_record(SESSION_ID, random.Random(1))]}).encode(),
                        headers={"content-type": "application/json"})
        print(f"{args.rows:,} task updates over {args.keys:,} tasks per run, {args.repeats} round(s); "
              f"service: SQLite sink, 2 ingest workers, spool sync=full", flush=True)
        results: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for round_number in range(args.repeats):
            for variant in VARIANTS:
                figures = one_run(variant, url, args.rows, args.keys)
                results[variant].append(figures)
                print(f"  round {round_number + 1} {variant:<12} {figures['rows'] / figures['seconds']:>9,.0f} rows/s"
                      f"  {1000 * figures['cpu'] / figures['rows'] * 1000:6.1f} ms CPU/1000 rows"
                      f"  {figures['requests']:,} requests, {figures['retries']} sent again"
                      + (f", {figures['coalesced']:,} replaced before sending" if figures.get("coalesced") else ""),
                      flush=True)
                drained = time.perf_counter()
                if not service.flush_all(timeout=600):
                    raise RuntimeError("the spool did not drain in 10 min")
                print(f"    (spool drained in {time.perf_counter() - drained:.1f} s)", flush=True)
        report(results)
    finally:
        reaper.cleanup()


def report(results: dict[str, list[dict[str, Any]]]) -> None:
    def rate(v: str) -> float:
        return statistics.median(r["rows"] / r["seconds"] for r in results[v])

    def cpu(v: str) -> float:
        return statistics.median(1000 * r["cpu"] / r["rows"] * 1000 for r in results[v])  # ms per 1000 rows

    print("\nmedians:")
    for variant in VARIANTS:
        print(f"  {variant:<12} {rate(variant):>9,.0f} rows/s  {cpu(variant):6.1f} ms CPU per 1000 rows")
    for variant in ("client", "client-dict"):
        speed = rate(variant) / rate("urllib3")
        cheaper = cpu(variant) < cpu("urllib3")
        verdict = "PASS" if speed >= 1.5 and cheaper else "FAIL"
        print(f"{verdict} {variant}: {speed:.2f}x the urllib3 loop's rows/s (goal >= 1.5x), "
              f"{cpu(variant) / cpu('urllib3'):.2f}x its CPU per row (goal < 1)")


if __name__ == "__main__":
    main()
