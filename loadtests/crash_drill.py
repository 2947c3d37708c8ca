"""Crash drill: under a steady write load, kill -9 a random process of the
service every few seconds (an ingest worker, the granian ingest main process,
the flusher, the query server, the supervisor itself: then the service is
started again on the same folder, as systemd would) and restart its MariaDB;
measure every recovery, then check that the database holds exactly the
acknowledged records, last version per key.

    .venv/bin/python -m loadtests.crash_drill [--kills 20] [--db-restarts 2] [--interval 3] [--seed N]

The service runs with the recovery timings of config.toml (health check every
1 s, flush retry backoff 0.2..5 s, max_delay 1 s) on a private MariaDB in a
temporary folder that is removed at the end, also on failure or Ctrl-C.
Exit status: 0 PASS, 1 FAIL, 130 interrupted. How it works: testkit/drill.py.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from testkit.drill import PRODUCTION_TIMINGS, Drill, DrillConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="processes to kill -9 (default 20)")
    parser.add_argument("--db-restarts", type=int, default=2, help="clean MariaDB stop/starts (default 2)")
    parser.add_argument("--interval", type=float, default=3.0,
                        help="seconds from one recovery to the next fault, +-50%% at random (default 3)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, printed)")
    parser.add_argument("--db-down", type=float, default=10.0, help="seconds the database stays down (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="ingest workers (default 2)")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="the fault phase ends after this long whatever is left (default 600)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) at the end")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    config = DrillConfig(kills=args.kills, db_restarts=args.db_restarts, interval=args.interval, seed=seed,
                         db_down=args.db_down, workers=args.workers, max_seconds=args.max_seconds)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupted)
    for key, value in PRODUCTION_TIMINGS.items():
        os.environ.setdefault(key, value)  # inherited by the service's processes

    folder = Path(tempfile.mkdtemp(prefix="crash-drill-"))
    drill = Drill(folder, config, out=lambda line: print(line, flush=True))
    started = time.monotonic()
    code = 1
    try:
        result = drill.run()
        code = 0 if result.passed else 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr, flush=True)
        code = 130
    except Exception:
        if drill.service is not None:
            print(f"--- last lines of the service log ---\n{drill.service.tail(40)}", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        drill.close()
        if args.keep:
            print(f"kept {folder}", flush=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
        print(f"total {time.monotonic() - started:.0f} s (seed {seed})", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
