"""CPU time and memory of processes, from /proc: where a phase's cycles went, per
call, and what the servers hold.

The machines are small and shared: the client, the server, PostgreSQL and Kafka
all run on the same cores, so a throughput ratio alone does not say who paid for
a call. The bench reads the CPU time of the server processes and of PostgreSQL
at the start and the end of each phase's timed window and reports it per call
completed in that window.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
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


def machine_jiffies() -> tuple[int, int]:
    """(all, idle) CPU time of the whole machine so far, in clock ticks (/proc/stat)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]), fields[3] + fields[4]  # idle + iowait; guest time is in user


class WindowMeter(threading.Thread):
    """What happened on the machine between two moments (``time.monotonic``): how
    busy the whole machine was (1.0 is every core busy), which tells a phase that
    saturated the cores from one that waited on something else; and the CPU
    seconds each group of processes spent, read at the same two moments as the
    calls the client counts, so that divided by those calls it is their cost."""

    def __init__(self, begin: float, end: float, groups: Mapping[str, Callable[[], list[int]]]):
        super().__init__(daemon=True)
        self.begin, self.end, self.groups = begin, end, groups
        self.busy = float("nan")
        self.cpu: dict[str, float] = {}
        self.seconds = float("nan")
        """How long the window between the two readings really was."""

    def run(self) -> None:
        time.sleep(max(0.0, self.begin - time.monotonic()))
        total0, idle0 = machine_jiffies()
        before = {name: cpu_seconds(pids()) for name, pids in self.groups.items()}
        started = time.monotonic()
        time.sleep(max(0.0, self.end - time.monotonic()))
        total1, idle1 = machine_jiffies()
        self.seconds = time.monotonic() - started
        self.cpu = {
            name: spent(before[name], cpu_seconds(pids())) for name, pids in self.groups.items()
        }
        if total1 > total0:
            self.busy = 1 - (idle1 - idle0) / (total1 - total0)
