"""Resident memory of a process, as the memory targets are measured (Linux ``/proc``).

One reader for the job reports, the Serve replicas' ``/metrics`` and the benchmarks, so they all
mean the same figure by "RSS" and "peak".
"""

from __future__ import annotations

import sys


def memory_mb(pid: int | str = "self") -> tuple[float, float]:
    """(``VmRSS``, ``VmHWM``) of ``pid`` in MB: now and at its peak; zeros when ``/proc`` has no
    such process (it is gone, or this is not Linux)."""
    rss = hwm = 0.0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, hwm


def peak_rss_mb() -> float:
    """This process's peak resident memory so far.

    Linux: ``VmHWM`` of this address space. ``ru_maxrss`` (the fallback elsewhere) would be wrong
    for a process started by a big parent: Linux carries the parent's resident size over fork+exec
    into it.
    """
    peak = memory_mb()[1]
    if peak:
        return peak
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / (1024 * 1024) if sys.platform == "darwin" else usage / 1024
