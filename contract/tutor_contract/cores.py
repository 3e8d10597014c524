"""How many CPU cores this process may really use: the cgroup's CPU quota, bounded by affinity.

In a container, ``os.cpu_count()`` is the host's count; the limit that matters is the cgroup's
quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded up, and never
more than the cores ``sched_getaffinity`` allows.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from threadpoolctl import threadpool_info, threadpool_limits

CGROUP = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_quota(root: Path = CGROUP) -> float | None:
    """The CPU quota in cores (e.g. 1.5), or None if unlimited or unknown."""
    if (v2 := _read(root / "cpu.max")) is not None:
        quota, _, period = v2.partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        cfs_quota = _read(folder / "cpu.cfs_quota_us")
        cfs_period = _read(folder / "cpu.cfs_period_us")
        if cfs_quota is not None and cfs_period is not None:
            if int(cfs_quota) > 0 and int(cfs_period) > 0:
                return int(cfs_quota) / int(cfs_period)
            return None
    return None


def affinity_cores() -> int:
    """Cores the scheduler lets this process run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def available_cores(root: Path = CGROUP) -> int:
    """Cores this process may use: the cgroup quota rounded up, at most the affinity, at least 1."""
    cores = affinity_cores()
    try:
        quota = cgroup_quota(root)
    except ValueError:  # a file in an unexpected format: trust the affinity
        quota = None
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def threads_per_job(cores: int, jobs: int, requested: int = 0, oversubscribe: int = 1) -> int:
    """Threads for each of ``jobs`` inference jobs that may run at once on ``cores``:
    ``requested`` if set, else min(cores, ceil(oversubscribe * cores / jobs)).

    CTranslate2 (OpenMP, whose threads wait for one another at every step) takes 1: a full
    pool then never oversubscribes the cores. ONNX Runtime with idle threads asleep takes 2: a
    lone synthesis gets every core, a full pool oversubscribes at most 2x. Measured on 2 cores,
    tiny.en and Piper, 1 / 4 / 8 students at once (``bench.speakers``): 128 / 269 / 442 ms to
    first audio this way, against 158 / 300 / 502 ms with 2x for both and 152 / 271 / 450 ms
    with 1x for both, which also makes a plain client wait 50 % longer for its reply's speech."""
    return requested or max(1, min(cores, math.ceil(oversubscribe * cores / max(1, jobs))))


def limit_blas(threads: int) -> list[str]:
    """Cap each BLAS pool loaded in this process (numpy's OpenBLAS) at ``threads``, and say
    what is capped, e.g. ``["openblas: 1"]``. Libraries loaded later keep their defaults."""
    threadpool_limits(limits=threads, user_api="blas")
    return [
        f"{pool['internal_api']}: {pool['num_threads']}"
        for pool in threadpool_info()
        if pool["user_api"] == "blas"
    ]
