"""Engine test helpers: a real engine (uvicorn on 127.0.0.1, a free port) in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from tutor_engine.app import create_app
from tutor_engine.backends import Backends
from tutor_engine.config import EngineSettings
from tutor_engine.transport import WS_PROTOCOL

from .stores import StoreKit, redis_kit, sqlite_kit


@dataclass
class Running:
    """A server running in a thread: its base URLs."""

    http: str
    ws: str


@contextlib.contextmanager
def serve(app: FastAPI, ready: bool = True, timeout: float = 60.0) -> Iterator[Running]:
    """Serve ``app`` on a free port; wait for /readyz to pass unless ``ready`` is False."""
    engine_state = getattr(app.state, "engine", None)
    max_size = engine_state.settings.max_message_bytes * 2 if engine_state else 16 * 2**20
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        ws_ping_interval=None,
        ws=WS_PROTOCOL,  # as python -m tutor_engine serves it
        ws_max_size=max_size,
        ws_per_message_deflate=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive(), "server thread died"
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    running = Running(http=f"http://127.0.0.1:{port}", ws=f"ws://127.0.0.1:{port}")
    try:
        if ready:
            while httpx.get(f"{running.http}/readyz").status_code != 200:
                assert time.monotonic() < deadline, httpx.get(f"{running.http}/readyz").text
                time.sleep(0.05)
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def engine(backends: Backends | None = None, **settings: Any) -> FastAPI:
    """An engine app with mock backends unless given others."""
    return create_app(EngineSettings(_env_file=None, **settings), backends)


async def recv(ws: Any) -> dict[str, Any]:
    """The next JSON message from a websockets client (a minute at most)."""
    async with asyncio.timeout(60):
        return json.loads(await ws.recv())


async def recv_until(ws: Any, kind: str) -> list[dict[str, Any]]:
    """Messages up to and including the first of type ``kind``."""
    got: list[dict[str, Any]] = []
    while not got or got[-1]["type"] != kind:
        got.append(await recv(ws))
    return got


@pytest.fixture
def mock_engine() -> Iterator[Running]:
    with serve(engine()) as running:
        yield running


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store_kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreKit]:
    """Each history store on fresh data (narrow with ``parametrize(..., indirect=True)``)."""
    if request.param == "redis":
        kit = redis_kit(request.getfixturevalue("redis_server"))
    elif request.param == "sqlite":
        kit = sqlite_kit(tmp_path)
    else:
        kit = StoreKit("memory", "", shared=False)
    yield kit
    await kit.close()
