"""Engine test helpers: a real engine (uvicorn on 127.0.0.1, a free port) in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from tutor_engine.app import create_app
from tutor_engine.backends import Backends
from tutor_engine.config import EngineSettings
from tutor_engine.transport import WS_PROTOCOL

from tests.servers import RunningServer
from tests.servers import serve as serve_app
from tests.support.waiting import wait_for

from .stores import StoreKit, redis_kit, sqlite_kit


@contextlib.contextmanager
def serve(app: FastAPI, ready: bool = True, timeout: float = 60.0) -> Iterator[RunningServer]:
    """Serve ``app`` on a free port as ``python -m tutor_engine`` does; wait for /readyz to pass
    unless ``ready`` is False."""
    engine_state = getattr(app.state, "engine", None)
    max_size = engine_state.settings.max_message_bytes * 2 if engine_state else 16 * 2**20
    options: dict[str, Any] = {
        "ws_ping_interval": None,
        "ws": WS_PROTOCOL,
        "ws_max_size": max_size,
        "ws_per_message_deflate": False,
    }
    with serve_app(app, startup_timeout=timeout, **options) as running:
        if ready:
            wait_for(
                lambda: httpx.get(f"{running.http}/readyz").status_code == 200,
                timeout,
                "the engine's /readyz",
                interval=0.05,
            )
        yield running


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
def mock_engine() -> Iterator[RunningServer]:
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
