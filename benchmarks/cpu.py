"""CPU accounting from /proc, shared by the benchmarks (Linux only).

A benchmark on a shared machine must say whether someone else used the CPUs
while it ran. The load average cannot: a benchmark that keeps two processes
busy (client and server) raises it by two on its own.
"""

from __future__ import annotations

import os

__all__ = ["machine_busy_s", "proc_cpu_s"]

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_busy_s() -> float | None:
    """CPU seconds all processes of the machine spent busy (not idle or iowait) since boot.

    ``None`` where /proc/stat is not readable.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    ticks = [int(x) for x in fields[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _CLK_TCK
