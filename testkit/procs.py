"""Reading processes from /proc: a process tree, a command line, a state.
Shared by the service harness, the load oracle, the crash drill and the
benchmarks' CPU accounting."""

from __future__ import annotations

from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every process below pid, children first."""
    out: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = [int(c) for c in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        except OSError:
            continue
        out.extend(children)
        frontier.extend(children)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def state_and_parent(pid: int) -> tuple[str, str]:
    """(state, parent pid) from /proc; ("", "") when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return fields[0], fields[1]
    except OSError:
        return "", ""


def is_alive(pid: int) -> bool:
    return state_and_parent(pid)[0] not in ("", "Z", "X")
