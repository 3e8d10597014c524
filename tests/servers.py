"""Real servers for tests: uvicorn apps on 127.0.0.1 in a background thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI


@dataclass
class RunningServer:
    """An app served on 127.0.0.1: its URLs and the app object (for white-box checks)."""

    app: FastAPI
    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


def loopback_socket() -> socket.socket:
    """A listening TCP socket on 127.0.0.1 with a free port."""
    return socket.create_server(("127.0.0.1", 0))


@contextlib.contextmanager
def serve(
    app: FastAPI,
    *,
    sock: socket.socket | None = None,
    startup_timeout: float = 30.0,
    **config: object,
) -> Iterator[RunningServer]:
    """Serve ``app`` with uvicorn on ``sock`` (default: a free loopback port) for the block."""
    sock = sock or loopback_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", log_config=None, **config)  # type: ignore[arg-type]
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield RunningServer(app, port)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
