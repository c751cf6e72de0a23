"""
CPU time and resident memory of a process tree, read from C{/proc} (Linux).

relayd's CPU time is the scheduler's run time of every thread
(C{/proc/<pid>/task/<tid>/schedstat}), summed over relayd's process and its
descendants (the worker processes), read before and after a run, with the
tick count of C{/proc/<pid>/stat} as a check.  Its resident memory is
C{VmRSS} summed over the same tree, sampled every 50 ms by a thread
(L{Watcher}), and the sum of the processes' C{VmHWM} (reset before each
run), which cannot miss a short spike.  See proc(5).
"""

from __future__ import annotations

import os
import resource
import threading

from . import KiB

__all__ = [
    "Watcher",
    "cpu_by_process",
    "cpu_delta",
    "cpu_seconds",
    "cpu_ticks",
    "hwm_bytes",
    "process_tree",
    "reset_hwm",
    "rss_bytes",
    "rusage_cpu",
    "system_cpu",
    "tree_hwm_bytes",
]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, list[int]]:
    """
    Map each process id to its children's, from C{/proc/*/stat}.
    """
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """
    @return: C{pid} and all its descendants that are alive now.
    """
    tree = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """
    CPU time of C{pids}, in seconds: the scheduler's run time of every live
    thread (C{/proc/<pid>/task/<tid>/schedstat}, nanoseconds).  Time of
    threads that have exited is not counted; L{cpu_ticks} does count it.
    """
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[0])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def cpu_by_process(pids: list[int]) -> dict[int, float]:
    """
    L{cpu_seconds} of each of C{pids}.
    """
    return {pid: cpu_seconds([pid]) for pid in pids}


def cpu_ticks(pids: list[int]) -> float:
    """
    User plus system CPU time of C{pids}, in seconds, from
    C{/proc/<pid>/stat} (all threads, exited ones too; the resolution is
    one clock tick, usually 10 ms).
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def rss_bytes(pids: list[int]) -> int:
    """
    Resident set size of C{pids} together, in bytes (C{statm}, cheap to
    read).
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError):
            continue
    return total


def system_cpu() -> tuple[float, float]:
    """
    The whole machine's busy CPU time and steal time, in seconds, from the
    C{cpu} line of C{/proc/stat} (busy: user, nice, system, irq, softirq).
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


def hwm_bytes(pid: int) -> int | None:
    """
    The kernel's peak RSS of C{pid} (C{VmHWM}), in bytes.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * KiB
    except OSError:
        pass
    return None


def reset_hwm(pid: int) -> bool:
    """
    Reset C{VmHWM} (writing 5 to C{clear_refs}, Linux 4.0 and later).
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def tree_hwm_bytes(pids: list[int]) -> int | None:
    """
    The sum of the processes' L{hwm_bytes}: each process's own peak.  With
    one process this is its peak; with several it is an upper bound of the
    tree's peak (their peaks need not coincide).
    """
    values = [hwm_bytes(pid) for pid in pids]
    known = [v for v in values if v is not None]
    return sum(known) if known else None


class Watcher:
    """
    Samples a process tree's RSS every C{interval} seconds in a thread and
    keeps the peak since the last L{reset}.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.pids = process_tree(pid)
        self.peak = 0
        self.last = 0
        self.samples = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        refresh = 0
        while not self._stop.is_set():
            refresh += 1
            if refresh % 20 == 0:  # the tree, once a second
                self.pids = process_tree(self.pid)
            value = rss_bytes(self.pids)
            with self._lock:
                self.last = value
                self.peak = max(self.peak, value)
                self.samples += 1
            self._stop.wait(self.interval)

    def reset(self) -> int:
        """
        Start a new peak; @return: the RSS now.
        """
        self.pids = process_tree(self.pid)
        value = rss_bytes(self.pids)
        with self._lock:
            self.peak = value
            self.last = value
        return value

    def cpu(self) -> tuple[float, float]:
        """
        @return: C{(precise, ticks)}: L{cpu_seconds} and L{cpu_ticks} of the
            tree.
        """
        pids = process_tree(self.pid)
        return cpu_seconds(pids), cpu_ticks(pids)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1)


def rusage_cpu(who: int) -> float:
    """
    User plus system CPU time of C{who} (C{resource.RUSAGE_SELF} or
    C{RUSAGE_CHILDREN}: the children waited for), in seconds.
    """
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def cpu_delta(before: tuple[float, float], after: tuple[float, float]) -> tuple[float, str, float]:
    """
    The CPU time between two L{Watcher.cpu} readings: the precise one,
    unless a thread exited meanwhile (then it falls short of the tick
    count, and the tick count is used).

    @return: C{(seconds, "schedstat" or "ticks", seconds by ticks)}.
    """
    precise = after[0] - before[0]
    ticks = after[1] - before[1]
    if precise < ticks - max(0.05, 0.05 * ticks):
        return ticks, "ticks", ticks
    return precise, "schedstat", ticks
