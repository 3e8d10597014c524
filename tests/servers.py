"""Real servers for tests: uvicorn apps on 127.0.0.1, in a background thread or in the loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
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
    server = _server(app, lifespan="on", **config)
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


@contextlib.asynccontextmanager
async def serve_in_loop(app: FastAPI, **config: object) -> AsyncIterator[RunningServer]:
    """Serve ``app`` inside the running event loop (no lifespan), for apps that share the test's
    asyncio objects; clients may connect at once: they wait in the listening socket's backlog."""
    sock = loopback_socket()
    server = _server(app, lifespan="off", **config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield RunningServer(app, sock.getsockname()[1])
    finally:
        server.should_exit = True
        await task
        sock.close()


def _server(app: FastAPI, **config: object) -> uvicorn.Server:
    options = {"log_level": "warning", "log_config": None, **config}
    return uvicorn.Server(uvicorn.Config(app, **options))  # type: ignore[arg-type]
