"""CPU time and memory of processes, from /proc: where a phase's cycles went, per
call, and what the servers hold.

The machines are small and shared: the client, the server, PostgreSQL and Kafka
all run on the same cores, so a throughput ratio alone does not say who paid for
a call. The bench reads the CPU time of the server processes and of PostgreSQL
before and after each phase and reports it per completed call.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """User plus system CPU seconds of each of ``pids`` (all its threads) that runs."""
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / _TICK
    return found


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings by the processes alive at the second
    (a process that ended in between is left out; one that started counts whole)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident memory of ``pids`` together (VmRSS; shared pages count in each)."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def postgres_pids() -> list[int]:
    """Every process whose program is PostgreSQL (the server and its backends)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if argv0.endswith(b"/postgres") or argv0.startswith(b"postgres:"):
            found.append(int(entry.name))
    return found
