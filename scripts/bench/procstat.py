"""What a server process costs, read from ``/proc``: CPU seconds and memory.

CPU is ``utime + stime`` of ``/proc/PID/stat`` (all threads of the process,
and of its child processes: our SMTP workers).
Memory is PSS (proportional set size, ``/proc/PID/smaps_rollup``): a page
shared by N processes counts 1/N in each, so summing PSS over a forking
server's processes (Postfix's one ``smtpd`` per connection) adds up to what
they really take, where summing RSS would count the shared libraries once
per process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as handle:
        text = handle.read()
    # The command name is in parentheses and may hold spaces: split after it.
    return text[text.rindex(")") + 2:].split()


def _own_cpu_seconds(pid: int) -> float:
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0  # ended meanwhile
    # fields[0] is field 3 (state) of proc(5); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time so far of ``pid`` (all its threads) and of its live child processes
    (our SMTP workers)."""
    return sum(_own_cpu_seconds(p) for p in (pid, *descendants(pid)))


def parent_of(pid: int) -> int | None:
    try:
        return int(_stat_fields(pid)[1])
    except (OSError, ValueError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children...)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            parent = parent_of(int(name))
            if parent is not None:
                children.setdefault(parent, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def total_pss_kib(pids: Iterable[int]) -> int:
    return sum(pss_kib(pid) for pid in pids)


def tree_pss_kib(pid: int) -> int:
    """PSS of ``pid`` and all its descendants, in KiB."""
    return total_pss_kib([pid, *descendants(pid)])


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""
