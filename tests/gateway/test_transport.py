"""The gateway's uvicorn transport (tutor_gateway.server), over real sockets.

A tiny ASGI app (it reports what the transport handed it) is served with exactly the
gateway's uvicorn options; clients are raw sockets and websockets' Sans-I/O client, which can
send what a well-behaved client library refuses to (invalid UTF-8, oversize heads).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import socket
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from tutor_gateway.config import GatewaySettings
from tutor_gateway.server import (
    EventQueue,
    GatewayHttpProtocol,
    GatewayWebSocketProtocol,
    uvicorn_options,
)
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close
from websockets.http11 import Response
from websockets.protocol import Protocol
from websockets.sync.client import connect
from websockets.uri import parse_uri

from tests.servers import RunningServer, serve

TOKEN = "s3cret-session-token"
UPGRADE = (
    b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


async def reporter(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers each WebSocket message with what it was; HTTP requests with 200 ``ok``."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "http":
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
    else:
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            if message.get("text") is not None:
                text = message["text"]
                try:
                    text.encode("utf-8")
                    report = {"text": len(text), "encodes": True}
                except UnicodeEncodeError:
                    report = {"text": len(text), "encodes": False}
            else:
                report = {"bytes": len(message["bytes"])}
            await send({"type": "websocket.send", "text": json.dumps(report)})


Factory = Callable[..., RunningServer]


@pytest.fixture
def transport() -> Iterator[Factory]:
    """Serve ``reporter`` with the gateway's uvicorn options for settings overrides."""
    with contextlib.ExitStack() as stack:

        def start(**overrides: Any) -> RunningServer:
            settings = GatewaySettings(_env_file=None, **overrides)  # type: ignore[call-arg]
            return stack.enter_context(serve(reporter, **uvicorn_options(settings)))  # type: ignore[arg-type]

        yield start


def exchange(server: RunningServer, request: bytes) -> tuple[int, bytes, bool]:
    """Send ``request`` on a fresh socket, read to EOF: status, body, whether all was sent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        try:
            sock.sendall(request)
            sent = True
        except OSError:
            sent = False
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body, sent


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert TOKEN not in caplog.text


class RawWebSocket:
    """websockets' Sans-I/O client on a plain socket: sends frames exactly as given."""

    def __init__(self, server: RunningServer, path: str = "/ws") -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        self.protocol = ClientProtocol(parse_uri(f"{server.ws}{path}"), max_size=None)
        self.events: list[Any] = []
        self.protocol.send_request(self.protocol.connect())
        self.flush()
        response = self.next_event()
        assert isinstance(response, Response) and response.status_code == 101

    def flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def next_event(self) -> Any:
        while not self.events:
            data = self.sock.recv(65536)
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            self.events += self.protocol.events_received()
            if not data and not self.events:
                raise ConnectionError("closed without an event")
        return self.events.pop(0)

    def send_text(self, data: bytes) -> dict[str, Any]:
        """Send a text frame of raw bytes; the reporter's JSON answer."""
        self.protocol.send_text(data)
        self.flush()
        return json.loads(self.next_event().data)

    def close(self) -> None:
        self.sock.close()


# Settings and options.


def test_frame_limit_defaults_to_twice_the_message_limit_and_is_validated() -> None:
    assert GatewaySettings(_env_file=None).ws_max_frame_bytes == 16 * 1024 * 1024
    settings = GatewaySettings(_env_file=None, max_message_bytes=1 << 20)
    assert settings.ws_max_frame_bytes == 2 << 20
    assert GatewaySettings(_env_file=None, ws_max_frame_bytes=9 << 20).ws_max_frame_bytes == 9 << 20
    with pytest.raises(ValidationError, match="WS_MAX_FRAME_BYTES"):
        GatewaySettings(_env_file=None, max_message_bytes=2 << 20, ws_max_frame_bytes=1 << 20)


def test_uvicorn_options_carry_the_settings() -> None:
    settings = GatewaySettings(
        _env_file=None,
        max_message_bytes=1 << 20,
        ws_per_message_deflate=False,
        max_url_bytes=1000,
        max_header_bytes=2000,
    )
    options = uvicorn_options(settings)
    assert options["ws_max_size"] == 2 << 20 and options["ws_per_message_deflate"] is False
    assert issubclass(options["ws"], WebSocketsSansIOProtocol)
    assert issubclass(options["ws"], GatewayWebSocketProtocol)
    assert issubclass(options["http"], GatewayHttpProtocol)
    assert (options["http"].max_url_bytes, options["http"].max_header_bytes) == (1000, 2000)


# WebSocket frames.


def test_invalid_utf8_text_reaches_the_app_and_the_connection_stays(
    transport: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = transport()
    ws = RawWebSocket(server)
    try:
        assert ws.send_text("héllo".encode()) == {"text": 5, "encodes": True}
        for bad in (b"\xff\xfe", b"ok \xc3", "😀".encode()[:3], b"\xed\xa0\x80", b"\xc0\xaf"):
            assert ws.send_text(bad)["encodes"] is False, bad
        assert ws.send_text(b"still here") == {"text": 10, "encodes": True}
    finally:
        ws.close()
    assert "Invalid UTF-8" not in caplog.text
    no_tracebacks(caplog)


def test_deflated_frame_over_the_hard_limit_closes_1009_as_it_inflates(
    transport: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    limit = 2 << 20
    server = transport(max_message_bytes=1 << 20, ws_max_frame_bytes=limit)
    bomb = bytes(limit + 1)
    assert len(zlib.compress(bomb)) < 16 * 1024  # what crosses the wire is tiny
    with connect(f"{server.ws}/ws", max_size=None) as ws:
        assert ws.protocol.extensions, "permessage-deflate was negotiated"
        ws.send(bytes(limit))  # at the limit: delivered
        assert json.loads(ws.recv(timeout=30)) == {"bytes": limit}
        with pytest.raises(ConnectionClosed) as closed:
            ws.send(bomb)
            ws.recv(timeout=30)
    assert isinstance(closed.value.rcvd, Close) and closed.value.rcvd.code == 1009
    no_tracebacks(caplog)


def test_plain_frame_over_the_hard_limit_closes_1009_and_the_client_sees_it(
    transport: Factory,
) -> None:
    limit = 1 << 20
    server = transport(max_message_bytes=limit)
    with connect(f"{server.ws}/ws", max_size=None, compression=None) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            # The server refuses at the frame header and drops the rest as it arrives, so
            # the close frame is read instead of a connection reset.
            ws.send(b"x" * (3 * limit))
            ws.recv(timeout=30)
    assert isinstance(closed.value.rcvd, Close) and closed.value.rcvd.code == 1009


def test_deflate_can_be_turned_off(transport: Factory) -> None:
    server = transport(ws_per_message_deflate=False)
    with connect(f"{server.ws}/ws") as ws:
        assert not ws.protocol.extensions
        ws.send("plain")
        assert json.loads(ws.recv(timeout=30)) == {"text": 5, "encodes": True}


@pytest.mark.parametrize("deflate", [True, False], ids=["deflate", "plain"])
def test_an_open_connection_holds_no_upgrade_request_and_parses_every_frame(
    transport: Factory, deflate: bool
) -> None:
    """What an idle connection keeps: websockets' frame parser alone (not the handshake's,
    whose local holds the request's headers) and the light ``EventQueue``."""
    server = transport(ws_per_message_deflate=deflate)
    with connect(f"{server.ws}/ws", compression="deflate" if deflate else None) as ws:
        for size in (5, 70_000, 1):  # one over the 64 KiB a read may bring
            ws.send("x" * size)
            assert json.loads(ws.recv(timeout=30)) == {"text": size, "encodes": True}
        (protocol,) = [
            o
            for o in gc.get_objects()
            if type(o) is GatewayWebSocketProtocol
            and not o.disconnected
            and o.server == ("127.0.0.1", server.port)  # this test's, whatever others left
        ]
        assert protocol.conn.parser.gi_code is Protocol.parse.__code__
        assert isinstance(protocol.queue, EventQueue)
        assert bool(protocol.conn.extensions) is deflate


async def test_the_event_queue_hands_events_over_in_order_to_one_reader() -> None:
    queue = EventQueue()
    queue.put_nowait(1)
    reader = asyncio.create_task(queue.get())
    assert await reader == 1 and queue.empty()
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already awaited"):
        await queue.get()
    queue.put_nowait(2)
    queue.put_nowait(3)
    assert await waiting == 2 and not queue.empty()
    assert await queue.get() == 3


# Oversize request heads, WebSocket upgrades and plain HTTP alike.


def upgrade(target: bytes, extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\n" + UPGRADE + extra + b"\r\n"


def plain(target: bytes, extra: bytes = b"") -> bytes:
    return (
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + extra
        + b"\r\n"
    )


def long_target(length: int) -> bytes:
    prefix = f"/ws?token={TOKEN}&pad=".encode()
    return prefix + b"a" * (length - len(prefix))


def headers(count: int, size: int) -> bytes:
    return b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * size) for i in range(count))


@pytest.mark.parametrize("request_of", [upgrade, plain], ids=["upgrade", "http"])
@pytest.mark.parametrize(
    ("target", "extra", "status"),
    [
        (long_target(8193), b"", 414),  # over MAX_URL_BYTES
        (long_target(4 << 20), b"", 414),  # streamed: refused long before its end
        (b"/ws", headers(5, 8000), 431),  # over MAX_HEADER_BYTES in total
        (b"/ws", headers(1, 4 << 20), 431),  # one header line httptools buffers whole
    ],
    ids=["url", "huge-url", "headers", "huge-header"],
)
def test_oversize_heads_are_answered_then_closed(
    transport: Factory,
    caplog: pytest.LogCaptureFixture,
    request_of: Callable[[bytes, bytes], bytes],
    target: bytes,
    extra: bytes,
    status: int,
) -> None:
    caplog.set_level(logging.INFO)
    server = transport()
    code, body, sent = exchange(server, request_of(target, extra))
    assert code == status and json.loads(body)["detail"]
    assert sent, "the server reads what the client still sends, so the answer is not reset"
    assert httpx.get(f"{server.http}/").text == "ok"
    no_tracebacks(caplog)


@pytest.mark.parametrize(
    ("target", "extra", "status"),
    [
        (long_target(8192), b"", 414),  # within MAX_URL_BYTES, but the line is over 8 KiB
        (b"/ws", headers(1, 9000), 431),  # one header line over 8 KiB
        (b"/ws", headers(129, 1), 431),  # more than 128 headers
    ],
    ids=["request-line", "header-line", "header-count"],
)
def test_upgrades_websockets_refuses_are_answered(
    transport: Factory, caplog: pytest.LogCaptureFixture, target: bytes, extra: bytes, status: int
) -> None:
    caplog.set_level(logging.INFO)
    server = transport()
    code, body, _ = exchange(server, upgrade(target, extra))
    assert code == status and json.loads(body)["detail"]
    no_tracebacks(caplog)


def test_limits_are_settings(transport: Factory) -> None:
    small = transport(max_url_bytes=1024, max_header_bytes=2048)
    assert exchange(small, plain(long_target(1025)))[0] == 414
    assert exchange(small, plain(b"/", headers(3, 1000)))[0] == 431
    assert exchange(small, plain(long_target(1024), headers(1, 1000)))[:2] == (200, b"ok")
    large = transport(max_url_bytes=16 * 1024, max_header_bytes=64 * 1024)
    assert exchange(large, plain(long_target(16 * 1024), headers(6, 8000)))[:2] == (200, b"ok")
    with connect(f"{large.ws}/ws?pad={'a' * 8000}") as ws:
        ws.send("hi")
        assert json.loads(ws.recv(timeout=30))["encodes"] is True
