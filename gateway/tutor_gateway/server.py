"""The gateway's uvicorn transport: its HTTP and WebSocket protocols, with their limits.

``uvicorn_options(settings)`` is the one set of uvicorn options the gateway is served with, by
``python -m tutor_gateway`` and by the tests alike. On top of uvicorn's own protocols:

- HTTP (httptools): a request target over MAX_URL_BYTES is answered 414 and header lines over
  MAX_HEADER_BYTES in total 431, both counted as the bytes arrive (httptools itself has no
  limit), for plain requests and WebSocket upgrades alike.
- WebSocket (websockets' Sans-I/O protocol): an upgrade that websockets refuses (a line over its
  8 KiB, more than 128 headers) gets websockets' 414/431 instead of no answer at all; a text
  frame that is not UTF-8 reaches the app decoded with ``surrogateescape`` (the relay answers it
  with an ``error``) instead of closing 1007 with a traceback; a message over
  WS_MAX_FRAME_BYTES (checked as it arrives and as it inflates) closes 1009.

Every refusal is one log line without the URL (it may hold a session token), and the
connection then closes gracefully: the answer is sent, then the rest of what the client is
still sending is read and dropped for up to ``LINGER_SECONDS`` so that the client gets to read
the answer instead of a connection reset.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import json
import logging
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets import http11
from websockets.exceptions import HeaderLineTooLong, RequestLineTooLong, TooManyHeaders
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.protocol import Protocol
from websockets.server import ServerProtocol

from .config import GatewaySettings

log = logging.getLogger("tutor_gateway.server")

LINGER_SECONDS = 5.0
"""How long a refused connection keeps reading (and dropping) before it is closed."""


def error_response(status: int, detail: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with a JSON ``detail`` body."""
    body = json.dumps({"detail": detail}).encode()
    phrase = http.HTTPStatus(status).phrase
    head = [f"HTTP/1.1 {status} {phrase}".encode()]
    names = {name.lower() for name, _ in default_headers}
    head += [name + b": " + value for name, value in default_headers]
    if b"date" not in names:
        head.append(b"date: " + email.utils.formatdate(usegmt=True).encode())
    head += [
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _client(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"


def _linger(
    transport: asyncio.Transport, loop: asyncio.AbstractEventLoop
) -> asyncio.TimerHandle | None:
    """Finish writing, then half-close; the caller drops what arrives until EOF or the timer."""
    if not transport.can_write_eof():
        transport.close()
        return None
    transport.write_eof()
    transport.resume_reading()
    return loop.call_later(LINGER_SECONDS, transport.close)


class _HeadTooLarge(Exception):
    """Raised from a parser callback: the request head passed a limit (status, detail)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with limits on the request line and header bytes."""

    max_url_bytes: ClassVar[int] = 8 * 1024
    max_header_bytes: ClassVar[int] = 32 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_pending = True  # between the start of a request and the end of its headers
        self._head_received = 0  # bytes received while a head was pending (httptools buffers)
        self._header_bytes = 0
        self._refusal: _HeadTooLarge | None = None
        self._refused = False
        self._linger_timer: asyncio.TimerHandle | None = None

    # Parser callbacks: count while httptools parses.

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_pending = True
        self._head_received = 0
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > self.max_url_bytes:
            raise _HeadTooLarge(414, f"Request URL longer than {self.max_url_bytes} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # "name: value\r\n"
        if self._header_bytes > self.max_header_bytes:
            raise _HeadTooLarge(431, f"Request headers longer than {self.max_header_bytes} bytes")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_pending = False
        super().on_headers_complete()

    # Transport.

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: dropped
        if self._head_pending:
            self._head_received += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            refusal = exc.__context__
            if isinstance(refusal, _HeadTooLarge):
                self._refuse(refusal)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        if self._head_pending and self._head_received > self.max_url_bytes + self.max_header_bytes:
            # One header line still being buffered inside httptools, or a request line that
            # has not reached its URL yet: the head is over both limits together.
            detail = f"Request headers longer than {self.max_header_bytes} bytes"
            self._refuse(_HeadTooLarge(431, detail))

    def _refuse(self, refusal: _HeadTooLarge) -> None:
        self._refused = True  # from here on what the client sends is dropped
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            # Pipelined after requests not yet answered: answered after them.
            self._refusal = refusal
            return
        log.warning(
            "%s - HTTP request refused: %d %s",
            _client(self.transport),
            refusal.status,
            refusal.detail,
        )
        self.transport.write(
            error_response(refusal.status, refusal.detail, self.server_state.default_headers)
        )
        self._linger_timer = _linger(self.transport, self.loop)

    def on_response_complete(self) -> None:
        if self._refusal is None or self.pipeline:
            super().on_response_complete()
            return
        self.server_state.total_requests += 1
        refusal, self._refusal = self._refusal, None
        if not self.transport.is_closing():
            self._refuse(refusal)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)


class EventQueue:
    """The ASGI events waiting for a connection's one reader, the app (``put_nowait``,
    ``get``, ``empty``): uvicorn's ``asyncio.Queue`` holds three deques, ~2.3 KiB on every
    idle connection; this holds a list."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def empty(self) -> bool:
        """Whether no event waits."""
        return not self._items

    def put_nowait(self, item: Any) -> None:
        """Add an event (and wake the reader)."""
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Any:
        """The oldest event, waiting for one (one reader at a time)."""
        if self._waiter is not None:
            raise RuntimeError("EventQueue.get is already awaited")
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


FEED_SLICE_BYTES = 4096
"""Wire bytes parsed at a time once the connection is open. Parsing stops as soon as a message
is waiting for the app, so at most one slice's worth of compressed frames (deflate inflates at
most ~1000:1) is inflated ahead of the app, however many frames one TCP read carried."""


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets Sans-I/O protocol that answers every refusal, keeps bad text,
    inflates only what the app is ready for, and can close a connection the client does not
    read (the ``tutor.close_now`` scope extension)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.ws_per_message_deflate:
            # Deflate without context takeover either way: each message is (de)compressed on
            # its own, and no zlib state (~22 KiB) is held between messages of an idle
            # connection. Otherwise uvicorn's settings (12-bit windows, memLevel 5).
            self.conn = ServerProtocol(
                extensions=[
                    ServerPerMessageDeflateFactory(
                        server_no_context_takeover=True,
                        client_no_context_takeover=True,
                        server_max_window_bits=12,
                        client_max_window_bits=12,
                        compress_settings={"memLevel": 5},
                    )
                ],
                max_size=self.config.ws_max_size,
                logger=logging.getLogger("uvicorn.error"),
            )
        self._failed = False
        self._unparsed = bytearray()  # wire bytes received but not parsed yet
        self.queue = EventQueue()  # type: ignore[assignment]  # has the methods uvicorn uses

    def data_received(self, data: bytes) -> None:
        if self._failed:
            self.conn.receive_data(data)
            self.conn.data_to_send()  # lingering after a refusal: dropped
            return
        if self.handshake_initiated:
            self._unparsed += data
            self._feed()
            return
        self.conn.receive_data(data)
        if self.conn.handshake_exc is not None:
            self._refuse_handshake(self.conn.handshake_exc)
            return
        self._handle_parsed()
        if self.handshake_initiated and data.find(b"\r\n\r\n") == len(data) - 4:
            self._parse_frames_only()

    def _parse_frames_only(self) -> None:
        """websockets' parser keeps the upgrade request (its headers, ~2 KiB) in a local for
        the connection's whole life. Once it has parsed the request, and before any frame byte
        (uvicorn hands over exactly the request's head), it only waits for frames: a fresh
        frame parser, the one it runs next, takes its place."""
        self.conn.parser = Protocol.parse(self.conn)
        next(self.conn.parser)

    def _handle_parsed(self) -> None:
        # Messages before a bad frame still reach the app; then the connection fails.
        self.handle_events()
        if self.conn.parser_exc is not None:
            self.handle_parser_exception()

    def _feed(self) -> None:
        """Parse buffered wire bytes while the app has nothing waiting; pause reading else."""
        # Once closing, nothing more reaches the app: parse on, to see the client's close.
        while self._unparsed and (self.queue.empty() or self.close_sent) and not self._failed:
            chunk = bytes(self._unparsed[:FEED_SLICE_BYTES])
            del self._unparsed[:FEED_SLICE_BYTES]
            self.conn.receive_data(chunk)
            self._handle_parsed()
        if self._unparsed and not self.read_paused and not self._failed:
            self.read_paused = True
            self.transport.pause_reading()

    async def receive(self) -> Any:
        message = await self.queue.get()
        if self.queue.empty():
            self._feed()
        if self.read_paused and self.queue.empty() and not self._unparsed:
            self.read_paused = False
            self.transport.resume_reading()
        return message

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The upgrade's request and response are not read again (~4 KiB of headers).
            del self.request, self.response

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:
            extensions: dict[str, Any] = self.scope["extensions"]  # ASGI types: dicts only
            extensions["tutor.close_now"] = self.close_now

    def close_now(self, code: int, reason: str) -> None:
        """Queue a close frame even behind a full send buffer, and drop the connection if the
        client has not answered it within the close timeout (a client that never reads)."""
        if self.close_sent or self.transport.is_closing():
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)
        self._feed()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def _refuse_handshake(self, exc: Exception) -> None:
        """websockets could not parse the upgrade request: answer it (uvicorn sends nothing)."""
        if isinstance(exc, RequestLineTooLong):
            status, detail = 414, f"Request line longer than {http11.MAX_LINE_LENGTH} bytes"
        elif isinstance(exc, HeaderLineTooLong):
            status, detail = 431, f"Request header line longer than {http11.MAX_LINE_LENGTH} bytes"
        elif isinstance(exc, TooManyHeaders):
            status, detail = 431, f"More than {http11.MAX_NUM_HEADERS} request headers"
        else:
            status, detail = 400, "Invalid WebSocket upgrade request"
        self.conn.data_to_send()  # websockets' own answer, replaced by the gateway's JSON one
        self._failed = True
        self.handshake_complete = True
        self.close_sent = True
        log.warning(
            "%s - WebSocket upgrade refused: %d %s", _client(self.transport), status, detail
        )
        self.transport.write(error_response(status, detail, self.default_headers))
        self.close_timer = _linger(self.transport, self.loop)

    def handle_parser_exception(self) -> None:
        """A frame websockets refused (over WS_MAX_FRAME_BYTES: 1009): close, then drain."""
        if self._failed:
            return
        self._failed = True
        if self.conn.parser_exc is not None:
            # Its traceback holds the parser's frames, whose locals hold what was received
            # (up to WS_MAX_FRAME_BYTES inflated): a cycle only the garbage collector breaks.
            self.conn.parser_exc.__traceback__ = None
        close = self.conn.close_sent
        code = close.code if close is not None else 1011
        reason = close.reason if close is not None else ""
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        log.warning("%s - WebSocket closed %d: %s", _client(self.transport), code, reason)
        self.read_paused = False
        self.close_timer = _linger(self.transport, self.loop)

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type != "text":
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        try:
            text = bytes(data).decode()
        except UnicodeDecodeError:
            # Not UTF-8: handed on with lone surrogates; the app answers it, the socket stays.
            text = bytes(data).decode("utf-8", "surrogateescape")
        self.queue.put_nowait({"type": "websocket.receive", "text": text})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()


def uvicorn_options(settings: GatewaySettings) -> dict[str, Any]:
    """The uvicorn options the gateway is served with (all but address and logging): the HTTP
    protocol class carries ``settings``' limits."""
    http_protocol = type(
        "GatewayHttpProtocol",
        (GatewayHttpProtocol,),
        {
            "max_url_bytes": settings.max_url_bytes,
            "max_header_bytes": settings.max_header_bytes,
            "__module__": __name__,
        },
    )
    return {
        "http": http_protocol,
        "ws": GatewayWebSocketProtocol,
        "ws_max_size": settings.ws_max_frame_bytes,
        "ws_per_message_deflate": settings.ws_per_message_deflate,
        "timeout_graceful_shutdown": 10,
    }
