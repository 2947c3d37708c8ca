"""CPU accounting for the write benchmark, from /proc: which process of the
service (or of anything else on the machine) used how much CPU during a
window, and how busy the machine was before a phase started.

Percentages are of one core: on a 2-core machine 200% means both cores busy.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from testkit.procs import cmdline, descendants

CLK_TCK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
QUIET_BUSY_PERCENT = 20.0  # other jobs below this: the machine counts as quiet
_STAT_NAMES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")

logger = logging.getLogger("bench")


def _stat(pid: int | str) -> tuple[str, list[str]] | None:
    """(command name, fields after the name) of /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 1:].split()


def status_kib(pid: int, field_name: str) -> int:
    """A KiB figure of /proc/<pid>/status (VmRSS, VmHWM); 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_cpu_s(pid: int) -> float:
    stat = _stat(pid)
    return (int(stat[1][11]) + int(stat[1][12])) / CLK_TCK if stat else 0.0


def ppid(pid: int) -> int:
    stat = _stat(pid)
    return int(stat[1][1]) if stat else 0


def _role(pid: int) -> str:
    cmd = cmdline(pid)
    if "flusher" in cmd:
        return "flusher"
    if "granian" not in cmd:
        return "other"
    app = "query" if "query.app" in cmd else "ingest"
    # granian forks its workers: a worker's parent runs granian too
    return f"{app} worker" if "granian" in cmdline(ppid(pid)) else f"{app} granian main"


def roles_of(leader: int) -> dict[str, list[int]]:
    """pids of one process tree (the supervisor of `run`, or one role) by role."""
    lead = cmdline(leader)
    top = "granian main" if "granian" in lead else "flusher" if "flusher" in lead else "supervisor"
    roles: dict[str, list[int]] = {top: [leader]}
    for pid in descendants(leader):
        roles.setdefault(_role(pid), []).append(pid)
    return roles


def all_cpu() -> dict[int, tuple[str, float]]:
    """Every process on the machine: pid -> (name, CPU seconds so far)."""
    out = {}
    for entry in os.scandir("/proc"):
        stat = _stat(entry.name) if entry.name.isdigit() else None
        if stat:
            out[int(entry.name)] = (stat[0], (int(stat[1][11]) + int(stat[1][12])) / CLK_TCK)
    return out


def machine_ticks() -> list[int]:
    return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


class CpuWindow:
    """CPU used by each group of processes between start() and stop(), in %
    of one core; plus the whole machine's use and the biggest consumers that
    are not part of the benchmark (other jobs, kernel threads)."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.percent: dict[str, float] = {}
        self.machine: dict[str, float] = {}  # /proc/stat categories, % of one core
        self.others: list[tuple[str, float]] = []
        self.seconds = 0.0
        self._t0 = 0.0
        self._procs0: dict[int, tuple[str, float]] = {}
        self._ticks0: list[int] = []

    @property
    def busy_percent(self) -> float:
        return 100 * CORES - self.machine.get("idle", 0.0) - self.machine.get("iowait", 0.0)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._procs0 = all_cpu()
        self._ticks0 = machine_ticks()

    def stop(self, extra: dict[str, float] | None = None, extra_pids: list[int] | None = None) -> None:
        """extra: CPU seconds measured elsewhere (role -> s); extra_pids: ours too, not 'others'."""
        self.seconds = max(1e-9, time.monotonic() - self._t0)
        procs = all_cpu()
        used = {pid: cpu - self._procs0[pid][1] for pid, (_, cpu) in procs.items() if pid in self._procs0}
        ours = {os.getpid(), *(extra_pids or [])}
        for role, pids in self.groups.items():
            self.percent[role] = 100 * sum(used.get(pid, 0.0) for pid in pids) / self.seconds
            ours.update(pids)
        for role, cpu_s in (extra or {}).items():
            self.percent[role] = 100 * cpu_s / self.seconds
        self.others = self._top_others(procs, used, ours)
        delta = [b - a for a, b in zip(self._ticks0, machine_ticks())]
        total = max(1, sum(delta))
        self.machine = {name: 100 * CORES * d / total for name, d in zip(_STAT_NAMES, delta)}

    def _top_others(self, procs: dict[int, tuple[str, float]], used: dict[int, float],
                    ours: set[int]) -> list[tuple[str, float]]:
        by_name: dict[str, float] = {}
        for pid, cpu_s in used.items():
            if pid not in ours and cpu_s > 0:
                name = procs[pid][0].split("/")[0]  # kworker/1:2 -> kworker
                by_name[name] = by_name.get(name, 0.0) + cpu_s
        return sorted(((n, 100 * s / self.seconds) for n, s in by_name.items()), key=lambda kv: -kv[1])[:4]

    def line(self) -> str:
        ours = ", ".join(f"{role} {pct:.0f}%" for role, pct in sorted(self.percent.items(), key=lambda kv: -kv[1])
                         if pct >= 0.5)
        m = self.machine
        others = ", ".join(f"{n} {v:.0f}%" for n, v in self.others if v >= 1) or "none"
        return (f"{ours} | machine busy {self.busy_percent:.0f}% of {100 * CORES}%"
                f" (user {m['user'] + m['nice']:.0f}, system {m['system']:.0f},"
                f" softirq {m['softirq'] + m['irq']:.0f}, steal {m['steal']:.0f}; iowait {m['iowait']:.0f})"
                f" | biggest others: {others}")


def background(seconds: float, ours: list[int] | None = None) -> tuple[float, str]:
    """How busy the machine is besides the benchmark (pids `ours` left out,
    e.g. an idle service): (busy % of all cores, description)."""
    window = CpuWindow({"ours": ours or []})
    window.start()
    time.sleep(seconds)
    window.stop()
    busy = max(0.0, window.busy_percent - window.percent["ours"])
    others = ", ".join(f"{n} {v:.0f}%" for n, v in window.others if v >= 1) or "no long-lived process"
    return busy, (f"{busy:.0f}% of {100 * CORES}% busy (steal {window.machine['steal']:.0f}%; biggest: {others})")


def wait_quiet(limit_s: float, ours: list[int] | None = None) -> str:
    """Wait (at most limit_s) until other jobs leave the machine nearly idle;
    returns what the machine did just before."""
    deadline = time.monotonic() + limit_s
    busy, text = background(2.0, ours)
    while busy > QUIET_BUSY_PERCENT and time.monotonic() < deadline:
        logger.info("machine not quiet: %s; waiting", text)
        busy, text = background(5.0, ours)
    return text
