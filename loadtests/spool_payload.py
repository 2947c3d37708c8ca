"""Should the spool hold msgpack instead of the posted JSON? (issue 13, point 3)

    cd /work/main && .venv/bin/python -m loadtests.spool_payload      # ~30 s, one core

Today ingest validates the body (msgspec JSON into the TaskBatch Struct) and
spools the body as posted; the flusher decodes that JSON again. The
alternative: ingest encodes the validated Struct as msgpack and spools that;
the flusher decodes msgpack. Measured here per realistic request of 100 tasks
(loadtests/bodies.py), in CPU time of this process (time.process_time), the
median of ROUNDS rounds, each alternating the two ways:

  ingest: validate JSON (both ways) + encode msgpack (msgpack way only)
  flusher: decode the spooled payload into Structs + build the rows (both)
  bytes spooled per request

The two ways are run one after the other inside each round, so a noisy
neighbour hits both alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import msgspec

from core.kinds import TASKS
from loadtests.bodies import PLACEHOLDER, task_templates
from plugins.tables import TASK_TABLE

ROUNDS = 15
REQUESTS = 300  # per round and way
T0 = 1_750_000_000_000_000


def _cpu_us_per_call(work: Callable[[bytes], object], payloads: list[bytes]) -> float:
    started = time.process_time()
    for payload in payloads:
        work(payload)
    return (time.process_time() - started) * 1e6 / len(payloads)


def _rows(records: object) -> None:
    for record in records:  # type: ignore[attr-defined]
        TASK_TABLE.to_row(record, T0, T0)


def main() -> None:
    bodies = [t.replace(PLACEHOLDER, f"{i:010d}".encode()) for i, t in enumerate(task_templates("p", REQUESTS))]
    json_decoder = msgspec.json.Decoder(TASKS.batch)
    msgpack_decoder = msgspec.msgpack.Decoder(TASKS.batch)
    msgpack_encoder = msgspec.msgpack.Encoder()
    packed = [msgpack_encoder.encode(json_decoder.decode(b)) for b in bodies]
    assert [msgpack_decoder.decode(p) for p in packed] == [json_decoder.decode(b) for b in bodies]

    ways: dict[str, dict[str, Callable[[bytes], object]]] = {
        "json (today)": {
            "ingest": json_decoder.decode,
            "flusher": lambda p: _rows(TASKS.decode(p)),
        },
        "msgpack": {
            "ingest": lambda b: msgpack_encoder.encode(json_decoder.decode(b)),
            "flusher": lambda p: _rows(getattr(msgpack_decoder.decode(p), TASKS.batch_field)),
        },
    }
    spooled = {"json (today)": bodies, "msgpack": packed}
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(ROUNDS):
        for way, steps in ways.items():
            samples.setdefault((way, "ingest"), []).append(_cpu_us_per_call(steps["ingest"], bodies))
            samples.setdefault((way, "flusher"), []).append(_cpu_us_per_call(steps["flusher"], spooled[way]))
    print(f"CPU per request of 100 tasks (median of {ROUNDS} rounds x {REQUESTS} requests), bytes spooled:")
    print(f"{'':14} {'ingest us':>10} {'flusher us':>11} {'flusher us/row':>15} {'total us':>9} {'bytes':>8}")
    for way in ways:
        ingest = statistics.median(samples[(way, "ingest")])
        flusher = statistics.median(samples[(way, "flusher")])
        size = statistics.mean(len(p) for p in spooled[way])
        print(f"{way:14} {ingest:10.1f} {flusher:11.1f} {flusher / 100:15.2f} {ingest + flusher:9.1f} {size:8,.0f}")


if __name__ == "__main__":
    main()
