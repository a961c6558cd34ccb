"""What the child processes of a benchmark run cost (memory, CPU).

The processes themselves are started and stopped with the tests' helper
(:class:`tests.support.processes.Process`: own session, SIGTERM then SIGKILL
to the group). Memory and CPU are read with psutil when it is installed,
else straight from ``/proc``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping

try:  # optional: the /proc readers below do the same on Linux
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# -- process trees, memory and CPU ---------------------------------------------


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that exist now."""
    if psutil is not None:
        try:
            root = psutil.Process(pid)
            return [pid, *(c.pid for c in root.children(recursive=True))]
        except psutil.Error:
            return []
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    if not os.path.exists(f"/proc/{pid}"):
        return []
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def memory(pid: int, *, pss: bool = True) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes; PSS splits pages shared after fork. (0, 0) if gone.

    RSS comes from ``/proc/<pid>/status`` (cheap); PSS from ``smaps_rollup``,
    which walks the process's page tables under its memory-map lock, so it is
    read only when asked (``pss=False`` returns RSS twice).
    """
    rss = proportional = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                    break
        if pss:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        proportional = int(line.split()[1]) * 1024
                        break
    except (OSError, ValueError):
        return 0, 0
    return rss, proportional or rss


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0.0


class Group:
    """Named sets of root pids whose trees are measured together (e.g. "web": [gunicorn])."""

    def __init__(self, roots: Mapping[str, Iterable[int]], refresh: float = 5.0) -> None:
        self.roots = {name: list(pids) for name, pids in roots.items()}
        self.refresh = refresh  # seconds a process tree is reused before it is read again
        self._trees: dict[str, tuple[float, list[int]]] = {}

    def pids(self, name: str) -> list[int]:
        now = time.monotonic()
        cached = self._trees.get(name)
        if cached is None or now - cached[0] > self.refresh:
            cached = (now, [p for root in self.roots[name] for p in tree(root)])
            self._trees[name] = cached
        return cached[1]

    def memory(self, *, pss: bool = True) -> dict[str, tuple[int, int]]:
        out = {}
        for name in self.roots:
            rss = pss_sum = 0
            for pid in self.pids(name):
                r, p = memory(pid, pss=pss)
                rss, pss_sum = rss + r, pss_sum + p
            out[name] = (rss, pss_sum)
        return out

    def cpu(self) -> dict[str, dict[int, float]]:
        """CPU seconds per component, per pid (so a later reading can subtract per process)."""
        return {name: {pid: cpu_seconds(pid) for pid in self.pids(name)} for name in self.roots}


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``), 0 if unknown."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLK_TCK


def cpu_delta(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict:
    """CPU seconds used per component between two :meth:`Group.cpu` readings."""
    out = {}
    for name, now in after.items():
        then = before.get(name, {})
        out[name] = sum(max(0.0, t - then.get(pid, 0.0)) for pid, t in now.items())
    return out
