"""Describe the machine an artifact or a measurement came from."""

from __future__ import annotations

import os
import platform
import resource


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().split()[0]
    except (OSError, IndexError):
        return None
    return None if text == "max" else int(text) if text.isdigit() else None


def _own_cgroup_dirs() -> list[str]:
    """This process's cgroup folders (v2 unified, then v1 memory controller), where they can be read."""
    dirs = []
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _, controllers, rel = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    dirs.append("/sys/fs/cgroup" + rel)
                elif "memory" in controllers.split(","):
                    dirs.append("/sys/fs/cgroup/memory" + rel)
    except (OSError, ValueError):
        pass
    return dirs + ["/sys/fs/cgroup", "/sys/fs/cgroup/memory"]


def memory_limits() -> list[tuple[int, str]]:
    """Every limit on the memory this process may still take, in bytes, with where it comes from:
    the machine's MemAvailable, its cgroup (v2 memory.max - memory.current, v1 limit - usage: a container's
    limit, which MemAvailable does not see) and RLIMIT_AS (ulimit -v) minus the address space in use."""
    out: list[tuple[int, str]] = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    out.append((int(line.split()[1]) * 1024, "MemAvailable"))
                    break
    except (OSError, ValueError, IndexError):
        pass
    for d in _own_cgroup_dirs():
        limit, used = _read_int(f"{d}/memory.max"), _read_int(f"{d}/memory.current")
        source = "the cgroup's memory.max"
        if limit is None:
            limit, used = _read_int(f"{d}/memory.limit_in_bytes"), _read_int(f"{d}/memory.usage_in_bytes")
            source = "the cgroup's memory.limit_in_bytes"
        if limit is not None and limit < 1 << 60:  # v1 reports "no limit" as a huge number
            out.append((max(0, limit - (used or 0)), source))
            break
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as fh:
                vsize = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            out.append((max(0, soft - vsize), "RLIMIT_AS (ulimit -v)"))
    except (OSError, ValueError, AttributeError):
        pass
    return out


def available_memory() -> tuple[int | None, str]:
    """(bytes this process can still take, which limit that is): the tightest of `memory_limits`."""
    limits = memory_limits()
    if not limits:
        return None, "unknown"
    return min(limits)


def available_memory_bytes() -> int | None:
    """Memory this process can take without swapping or being killed, or None where unknown."""
    return available_memory()[0]


def host_description() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": memory_gib(), "platform": platform.platform()}


def peak_rss_gib() -> float:
    """This process's peak resident memory in GiB (VmHWM: unlike ru_maxrss, not inherited across fork/exec)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 2**20, 3)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def current_rss_gib() -> float:
    """This process's resident memory now, GiB."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except OSError:
        return 0.0


class PeakRssDelta:
    """Context manager: the highest resident memory reached inside the block, above what it was on entry (GiB).

    Sampled by a background thread every `interval` seconds (a peak shorter than that can be missed), so
    several measurements can be made in one process, which VmHWM (a process-wide maximum) cannot do.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.start = self.peak = 0.0

    def __enter__(self) -> "PeakRssDelta":
        import threading

        self.start = self.peak = current_rss_gib()
        self._stop = threading.Event()

        def watch() -> None:
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, current_rss_gib())

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_gib())

    @property
    def delta_gib(self) -> float:
        return round(max(0.0, self.peak - self.start), 3)


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat; None where it cannot be read."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields[:8])


def idle_cores(sample_seconds: float = 0.25) -> int:
    """How many of this process's cores are idle now (at least 1): the default thread count for training.

    Why: on a machine where another process holds a core, torch with a thread per core spins waiting for
    the busy one (500 adapter steps measured 45 s alone and 460-650 s beside another job); threads only
    for the idle cores keep the speed of one core per thread. Measured from /proc/stat over
    `sample_seconds`; every usable core where that cannot be read.
    """
    import time

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    first = _cpu_times()
    if first is None:
        return cores
    time.sleep(sample_seconds)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return cores
    idle = (second[0] - first[0]) / (second[1] - first[1]) * (os.cpu_count() or cores)
    return max(1, min(cores, int(idle + 0.5)))
