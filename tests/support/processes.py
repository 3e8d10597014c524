"""Servers run as their own processes on 127.0.0.1 (``python -m tutor_gateway`` or
``python -m tutor_engine``), for tests that need a real process: its pid, its log file, the
engines it starts, a SIGKILL or a restart on the same state directory::

    server = start_server(gateway_argv(), gateway_env(port, state_dir), port, log, "/health")
    ...
    stop_server(server)  # SIGTERM, then SIGKILL after a bound
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

READY_TIMEOUT_SECONDS = 60.0


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB."""
    return psutil.Process(pid).memory_info().rss / 2**20


@dataclass
class ServerProcess:
    """A server started as its own process: its address, pid and log file."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def children(self) -> list[int]:
        """Pids of the processes this one started (a gateway's engines)."""
        return [child.pid for child in psutil.Process(self.pid).children()]

    def engines(self) -> dict[int, int]:
        """A gateway's engine processes: pid → the port each listens on (0: not yet)."""
        found = {}
        for child in psutil.Process(self.pid).children():
            with contextlib.suppress(psutil.Error):
                if "tutor_engine" in child.cmdline():
                    listening = [
                        c.laddr.port
                        for c in child.net_connections("tcp")
                        if c.status == psutil.CONN_LISTEN
                    ]
                    found[child.pid] = listening[0] if listening else 0
        return found

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")


def gateway_argv() -> list[str]:
    return [sys.executable, "-m", "tutor_gateway"]


def engine_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "tutor_engine", "--host", "127.0.0.1", "--port", str(port)]


def gateway_env(port: int, state_dir: Path, **overrides: Any) -> dict[str, str]:
    """A local-mode gateway on ``port`` with mock engines and its own ``STATE_DIR``; ``ENGINE_*``
    overrides pass through to its engines."""
    return {
        "MANAGEMENT_API_HOST": "127.0.0.1",
        "MANAGEMENT_API_PORT": str(port),
        "WEBSOCKET_URL": f"ws://127.0.0.1:{port}/ws",
        "ENGINE_ASR_BACKEND": "mock",
        "ENGINE_TTS_BACKEND": "mock",
        "ENGINE_LLM_BACKEND": "mock",
        "STATE_DIR": str(state_dir),
        "LOG_LEVEL": "info",
        **{name: str(value) for name, value in overrides.items()},
    }


def launch_server(
    argv: list[str], env: dict[str, str], port: int, log_path: Path, cwd: Path | None = None
) -> ServerProcess:
    """Start the process (environment: this one's plus ``env``), without waiting for it."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return ServerProcess(process, port, log_path)


def wait_ready(server: ServerProcess, path: str, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Until ``GET path`` answers 200; fail with the log if the process exits or it takes
    longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        assert server.alive(), f"server exited early:\n{server.log()[-3000:]}"
        assert time.monotonic() < deadline, f"server not ready:\n{server.log()[-3000:]}"
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.http}{path}", timeout=2).status_code == 200:
                return
        time.sleep(0.05)


def start_server(
    argv: list[str],
    env: dict[str, str],
    port: int,
    log_path: Path,
    ready_path: str,
    cwd: Path | None = None,
) -> ServerProcess:
    """Start the process and return once ``ready_path`` answers."""
    server = launch_server(argv, env, port, log_path, cwd)
    wait_ready(server, ready_path)
    return server


def stop_server(server: ServerProcess, timeout: float = 20.0) -> None:
    """SIGTERM, and SIGKILL if it has not exited within ``timeout``."""
    if server.alive():
        server.process.terminate()
        try:
            server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
