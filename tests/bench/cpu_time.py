"""CPU seconds of a local process (a server, a database backend), read from /proc, for the benchmarks'
"where did the time go" figures."""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces); [] when it is gone or
    there is no /proc (not Linux). Field 1 is the parent, 11-14 the CPU ticks (own user and system, then
    those of the children it has waited for)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return []


def _seconds(ticks: list[str]) -> float:
    return sum(int(value) for value in ticks) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of `pid` so far; 0 when it is gone."""
    return _seconds(_stat(pid)[11:13])


def cpu_seconds_with_reaped(pid: int) -> float:
    """CPU seconds of `pid` and of the children it has already waited for (which left it their time)."""
    return _seconds(_stat(pid)[11:15])


def parent_pid(pid: int) -> int:
    """The parent of `pid`; 0 when it is gone."""
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, theirs, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            children.setdefault(parent_pid(int(entry.name)), []).append(int(entry.name))
    found, waiting = [], list(children.get(pid, []))
    while waiting:
        child = waiting.pop()
        found.append(child)
        waiting.extend(children.get(child, []))
    return found
