"""`persistence-service status [--watch] [--url URL]`: a terminal view of a
running service, read from its /health and /metrics over HTTP (stdlib
urllib), so it works against a remote service too.

Rates (rows flushed and accepted per second) come from two reads of the
Prometheus counters: one shot reads twice, RATE_SAMPLE_S apart; --watch
compares each read with the one before."""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

from msgspec import Struct

REFRESH_S = 2.0
RATE_SAMPLE_S = 1.0
TIMEOUT_S = 5.0
CLEAR = "\x1b[H\x1b[2J"
FLUSHED = "persistence_flush_rows_total"
ACCEPTED = "persistence_records_accepted_total"
_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# Never through an HTTP proxy of the environment (as ingest/proxy.py): the URL is the service itself.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Snapshot(Struct):
    taken_s: float  # time.monotonic() of the read
    health: dict[str, Any]
    counters: dict[str, dict[str, float]]  # metric name -> kind label -> value (summed over other labels)
    metrics_error: str = ""


class Unreachable(Exception):
    """The service did not answer /health."""


def _get(url: str, api_key: str | None) -> tuple[int, bytes]:
    headers = {"X-API-Key": api_key} if api_key else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with _OPENER.open(request, timeout=TIMEOUT_S) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:  # 503 from /health still carries the body
        return exc.code, exc.read()


def parse_counters(text: str, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Prometheus text: per wanted metric, its samples summed by their `kind` label."""
    out: dict[str, dict[str, float]] = {name: {} for name in names}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) not in out:
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        kind = labels.get("kind", "")
        out[match.group(1)][kind] = out[match.group(1)].get(kind, 0.0) + float(match.group(3))
    return out


def read_snapshot(base_url: str, api_key: str | None = None) -> Snapshot:
    try:
        status, body = _get(f"{base_url}/health", api_key)
        health = json.loads(body)
    except (OSError, ValueError) as exc:
        raise Unreachable(f"cannot read {base_url}/health: {exc}") from exc
    if status not in (200, 503) or not isinstance(health, dict) or "buffer" not in health:
        raise Unreachable(f"{base_url}/health answered {status}: {body[:200]!r}")
    taken = time.monotonic()
    try:
        status, body = _get(f"{base_url}/metrics", api_key)
    except OSError as exc:
        return Snapshot(taken, health, {}, f"cannot read /metrics: {exc}")
    if status != 200:
        return Snapshot(taken, health, {}, f"/metrics answered {status}")
    return Snapshot(taken, health, parse_counters(body.decode("utf-8", "replace"), (FLUSHED, ACCEPTED)))


def rate(before: Snapshot | None, after: Snapshot, name: str) -> dict[str, float] | None:
    """Per-kind rate of a counter between two reads; None when it cannot be told."""
    if before is None or name not in before.counters or name not in after.counters:
        return None
    seconds = after.taken_s - before.taken_s
    old, new = before.counters[name], after.counters[name]
    if seconds <= 0 or any(new.get(k, 0.0) < v for k, v in old.items()):
        return None  # a counter went back: the service restarted between the reads
    return {kind: (new.get(kind, 0.0) - old.get(kind, 0.0)) / seconds for kind in new}


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}h {minutes:02d}m {secs:02d}s" if hours or days else f"{minutes}m {secs:02d}s"
    return f"{days}d {text}" if days else text


def _rate_text(rates: dict[str, float] | None, why: str) -> str:
    if rates is None:
        return f"n/a{f' ({why})' if why else ''}"
    total = sum(rates.values())
    parts = ", ".join(f"{kind or 'all'}s {value:,.0f}/s" for kind, value in sorted(rates.items()))
    return f"{total:,.0f} rows/s ({parts})" if parts else f"{total:,.0f} rows/s"


def _last_flush(text: str | None) -> str:
    if not text:
        return "never"
    try:
        ago = time.time() - datetime.fromisoformat(text).timestamp()
    except ValueError:
        return text
    return f"{text} ({max(ago, 0.0):.1f} s ago)"


def render(snap: Snapshot, before: Snapshot | None, url: str) -> str:
    h, b = snap.health, snap.health["buffer"]
    flusher = h.get("flusher") or {}
    lines = [
        f"persistence-service {h.get('version', '?')}  {url}  up {_duration(h.get('uptime_seconds', 0))}",
        (f"status        {h['status']}    database {h['database']}    "
         f"flusher {'alive' if flusher.get('alive') else 'NOT RUNNING'}"),
        (f"spool         {b['sessions_count']:,} sessions + {b['tasks_count']:,} tasks = {b['total_count']:,} records,"
         f" {_bytes(b.get('bytes', 0))} of {_bytes(b['capacity'])} ({b['usage_percent']} %)"),
        f"lag           {b.get('oldest_age_seconds', 0.0):.1f} s (age of the oldest record waiting)",
        f"drain         {_estimate(b.get('estimated_lag_seconds'))} to drain what waits, at the rate last measured"
        f" ({b.get('drain_rate') or 0:,.0f} rows/s)",
        f"flush rate    {_rate_text(rate(before, snap, FLUSHED), snap.metrics_error)}",
        f"accept rate   {_rate_text(rate(before, snap, ACCEPTED), snap.metrics_error)}",
        f"last flush    {_last_flush(b.get('last_flush'))}",
        f"orphans held  {b.get('held_orphans', 0):,}",
        f"dead letters  {b.get('dead_letters', 0):,}",
    ]
    if flusher.get("sink_error"):
        lines.append(f"sink error    {flusher['sink_error']}")
    return "\n".join(lines) + "\n"


def show_once(url: str, api_key: str | None, out: TextIO = sys.stdout,
              sleep: Callable[[float], None] = time.sleep) -> int:
    try:
        first = read_snapshot(url, api_key)
        sleep(RATE_SAMPLE_S)
        second = read_snapshot(url, api_key)
    except Unreachable as exc:
        print(f"persistence-service status: {exc}", file=sys.stderr)
        return 1
    out.write(render(second, first, url))
    return 0


def watch(url: str, api_key: str | None, interval_s: float = REFRESH_S, out: TextIO = sys.stdout,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Refresh every interval_s until Ctrl-C (exit 0)."""
    before: Snapshot | None = None
    clear = CLEAR if out.isatty() else "\n"
    try:
        while True:
            try:
                snap = read_snapshot(url, api_key)
                screen = render(snap, before, url)
                before = snap
            except Unreachable as exc:
                screen = f"{exc}\n(retrying every {interval_s:g} s; Ctrl-C to stop)\n"
            out.write(f"{clear}{time.strftime('%H:%M:%S')}  every {interval_s:g} s, Ctrl-C to stop\n{screen}")
            out.flush()
            sleep(interval_s)
    except KeyboardInterrupt:
        out.write("\n")
        return 0


def _estimate(seconds: float | None) -> str:
    return "unknown yet" if seconds is None else f"{seconds:.1f} s"
