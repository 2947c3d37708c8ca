"""What validation costs per request: `ingest.validation.validate_batch` on
the benchmark's 100-task body (74 KB, loadtests/bodies.py), in-process, no
HTTP. With --against REV the same is timed on that git revision's
core/records.py and ingest/validation.py, interleaved with this tree's, so
the two figures are side by side in one run.

    cd /work/main && .venv/bin/python -m loadtests.validate_cost [--against 06a9eee] [--rounds 7]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from core.kinds import TASKS
from ingest.validation import validate_batch
from loadtests import bodies

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="a git revision to time side by side")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    return parser.parse_args(argv)


def _module_at(revision: str, relative: str, name: str, folder: Path) -> ModuleType:
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:{relative}"], check=True,
                            capture_output=True, text=True).stdout
    path = folder / relative.replace("/", "_")
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def old_validator(revision: str) -> Callable[[bytes], int]:
    """validate_batch as it was at revision (its own records module, under its import name while loading)."""
    current = sys.modules["core.records"]
    with tempfile.TemporaryDirectory() as folder:
        _module_at(revision, "core/records.py", "core.records", Path(folder))
        try:
            validation = _module_at(revision, "ingest/validation.py", "validation_at_revision", Path(folder))
        finally:
            sys.modules["core.records"] = current
    kind = 2  # the tasks' spool entry kind, which validate_batch took before record kinds were declared
    return lambda body: validation.validate_batch(kind, body)


def per_call_us(validate: Callable[[bytes], int], body: bytes, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        validate(body)
    return (time.perf_counter() - started) / calls * 1e6


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    body = bodies.stamp(bodies.split_template(bodies.task_templates("v", 8)[0]), 1)
    contenders: dict[str, Callable[[bytes], int]] = {"this tree": lambda b: len(validate_batch(TASKS, b))}
    if args.against:
        contenders[args.against] = old_validator(args.against)
    for validate in contenders.values():
        assert validate(body) == 100
    times: dict[str, list[float]] = {label: [] for label in contenders}
    for _ in range(args.rounds):
        for label, validate in contenders.items():
            times[label].append(per_call_us(validate, body, args.calls))
    print(f"validate_batch, one 100-task body of {len(body):,} bytes, {args.rounds} rounds x {args.calls} calls")
    for label, values in times.items():
        print(f"  {label:>12}: median {statistics.median(values):6.1f} us per request "
              f"(min {min(values):.1f}, max {max(values):.1f})")


if __name__ == "__main__":
    main()
