"""Attack harness: real gateway and engine processes on 127.0.0.1, measured from outside.

Each attack test starts its own ``python -m tutor_gateway`` (which starts real engine
processes) or ``python -m tutor_engine``, attacks it as a hostile client would, and asserts
the bound: resident memory growth, the engine's pid, a well-behaved client's latency as a
ratio of its own unloaded latency measured in the same test, and what every client saw.
Sizes are scaled down from the review's (MiBs, not GiBs) but keep the same shapes.
"""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.support.processes import (
    ServerProcess,
    engine_argv,
    free_port,
    gateway_argv,
    gateway_env,
    start_server,
    stop_server,
)

GatewayStarter = Callable[..., ServerProcess]


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[GatewayStarter]:
    """Start ``python -m tutor_gateway`` with mock backends and extra environment variables.

    Variables are the gateway's and the engines' own (``ENGINE_*`` pass through to engines).
    """
    started: list[ServerProcess] = []

    def start(**env: Any) -> ServerProcess:
        port = free_port()
        server = start_server(
            gateway_argv(),
            gateway_env(port, tmp_path / f"state-{len(started)}", **env),
            port,
            tmp_path / f"gateway-{len(started)}.log",
            "/health",
        )
        started.append(server)
        return server

    yield start
    for server in started:
        stop_server(server)


@pytest.fixture
def engine_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``python -m tutor_engine`` on a free port (mock backends unless overridden)."""
    started: list[ServerProcess] = []

    def start(**env: Any) -> ServerProcess:
        port = free_port()
        base = {
            "ENGINE_ASR_BACKEND": "mock",
            "ENGINE_TTS_BACKEND": "mock",
            "ENGINE_LLM_BACKEND": "mock",
            "ENGINE_API_KEY": "",
        }
        server = start_server(
            engine_argv(port),
            {**base, **{k: str(v) for k, v in env.items()}},
            port,
            tmp_path / f"engine-{len(started)}.log",
            "/readyz",
        )
        started.append(server)
        return server

    yield start
    for server in started:
        stop_server(server)


def create_session(server: ServerProcess, tutor_id: int = 1, student_id: int = 1) -> dict[str, Any]:
    """POST /v1/sessions; the 201 body."""
    response = httpx.post(
        f"{server.http}/v1/sessions",
        json={"tutor_id": tutor_id, "student_id": student_id},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()


def connect_session(
    server: ServerProcess, session: dict[str, Any], **options: Any
) -> ClientConnection:
    """A WebSocket to the session through the gateway (keyword options go to ``connect``)."""
    options.setdefault("max_size", None)
    options.setdefault("open_timeout", 30)
    return connect(
        f"{server.ws}/ws/ws/{session['session_id']}?token={session['engine_token']}", **options
    )


def recv_json(ws: ClientConnection, timeout: float = 60) -> dict[str, Any]:
    """The next message as a dict."""
    return json.loads(ws.recv(timeout=timeout))


def round_trips(ws: ClientConnection, count: int, text: str = "ping") -> list[float]:
    """Seconds each of ``count`` text turns took to be answered (skipping nothing)."""
    took: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        ws.send(json.dumps({"type": "text", "content": text}))
        reply = recv_json(ws)
        took.append(time.perf_counter() - started)
        assert reply["type"] == "text", reply
    return took


def median(values: list[float]) -> float:
    return statistics.median(values)


class RawClient:
    """A WebSocket client on a bare socket that reads only when told to (a stuck browser).

    Frames are built by websockets' sans-I/O protocol; ``receive_buffer`` shrinks the socket's
    receive buffer so that a client that stops reading stalls the server quickly.
    """

    def __init__(self, url: str, receive_buffer: int | None = None) -> None:
        from websockets.client import ClientProtocol
        from websockets.http11 import Response
        from websockets.uri import parse_uri

        uri = parse_uri(url)
        self.protocol = ClientProtocol(uri, max_size=None)
        self.sock = socket.socket()
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(30)
        self.sock.connect((uri.host, uri.port))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        while not any(isinstance(e, Response) for e in self.protocol.events_received()):
            assert self.protocol.handshake_exc is None, self.protocol.handshake_exc
            self.protocol.receive_data(self.sock.recv(65536))
        assert self.protocol.handshake_exc is None, self.protocol.handshake_exc

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def send_text(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        self._flush()

    def read_to_close(self, timeout: float = 60) -> tuple[list[str], int | None]:
        """Read everything until the server closes: the text frames and the close code."""
        from websockets.frames import Opcode

        self.sock.settimeout(timeout)
        texts: list[str] = []
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except (ConnectionResetError, TimeoutError):
                data = b""
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            for event in self.protocol.events_received():
                if getattr(event, "opcode", None) is Opcode.TEXT:
                    texts.append(event.data.decode())
            if self.protocol.close_rcvd is not None or not data:
                code = self.protocol.close_rcvd.code if self.protocol.close_rcvd else None
                return texts, code

    def close(self) -> None:
        self.sock.close()
