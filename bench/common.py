"""Shared pieces of the benchmarks: processes on 127.0.0.1, percentiles, JSON results."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
from tutor_contract.cores import available_cores

RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not become ready")


@contextlib.contextmanager
def process(
    args: Sequence[str], env: dict[str, str], ready_url: str, stop_seconds: float = 15
) -> Iterator[psutil.Process]:
    """Run a server process until the block exits; wait for ``ready_url`` first. The block
    gets it as a psutil process (its RSS, its children)."""
    proc = subprocess.Popen(
        args, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_http(ready_url)
        yield psutil.Process(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(stop_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()


def cpu_seconds(server: psutil.Process, children: bool = True) -> float:
    """CPU time (user + system) ``server`` and its children (a gateway's engines) have used."""
    total = 0.0
    for proc in [server, *(server.children(recursive=True) if children else ())]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p99/mean of round trips, in milliseconds."""
    ordered = sorted(seconds)
    quantiles = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(quantiles[98] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` with machine facts, and return its path.

    ``machine.cores`` is what this process may use (the cgroup quota, the affinity); ``cpus``
    the host's count. Figures from machines with other core counts are not comparable."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {
        "benchmark": name,
        "python": sys.version.split()[0],
        "machine": {
            "cores": available_cores(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **result,
    }
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
