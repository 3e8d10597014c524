"""Fixtures shared by every test tier; the cluster ones (API emulator, fake kubelet, operator)
come from ``tests.support.cluster`` as a plugin."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tutor_gateway.app import create_app
from tutor_gateway.config import GatewaySettings
from tutor_gateway.server import uvicorn_options

from .servers import RunningServer, loopback_socket, serve
from .support.redis_server import RedisServer

pytest_plugins = ["tests.support.cluster"]

GatewayFactory = Callable[..., RunningServer]


@pytest.fixture
def gateway_factory(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[GatewayFactory]:
    """Start gateways with settings overrides; all are stopped after the test.

    A gateway on the test's API emulator (``kube_api_url`` its ``kube_api``'s) authenticates as
    the chart's gateway ServiceAccount, so it runs under the chart's RBAC like the operator.
    """
    with contextlib.ExitStack() as stack:

        def start(**overrides: Any) -> RunningServer:
            if "kube_api" in request.fixturenames and overrides.get("kube_api_url"):
                api = request.getfixturevalue("kube_api")
                if overrides["kube_api_url"] == api.url:
                    overrides.setdefault("kube_api_token", api.tokens["gateway"])
            sock = loopback_socket()
            port = sock.getsockname()[1]
            overrides.setdefault("websocket_url", f"ws://127.0.0.1:{port}/ws")
            overrides.setdefault("state_dir", str(tmp_path_factory.mktemp("state")))
            settings = GatewaySettings(_env_file=None, **overrides)  # type: ignore[call-arg]
            app = create_app(settings)
            # Exactly the options ``python -m tutor_gateway`` serves with.
            return stack.enter_context(serve(app, sock=sock, **uvicorn_options(settings)))

        yield start


@pytest.fixture
def gateway(gateway_factory: GatewayFactory) -> RunningServer:
    """A local-mode gateway with the seed's defaults (engines start on demand)."""
    return gateway_factory()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1 (no password), stopped after the test.

    ``.url``, ``.stop()`` and ``.start()`` (same port, empty) for "store down and back";
    build a ``RedisServer(password=...)`` directly for other setups.
    """
    with RedisServer() as server:
        yield server


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port where nothing listens (bound, never listening: connections refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()
