"""The engine's WebSocket transport: uvicorn's, except that bad UTF-8 is not fatal.

uvicorn fails a connection whose text frame is not valid UTF-8 (close 1007, with a logged
traceback). The engine's rule is that every bad frame gets an ``error`` and the connection
stays usable, so this protocol hands such a frame to the app as bytes marked with
``INVALID_UTF8`` and the app answers it like any other rejected frame.

``WS_PROTOCOL`` is what ``uvicorn.Config(ws=...)`` should get.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

INVALID_UTF8 = "tutor_engine.invalid_utf8"  # key set on a receive event whose text was not UTF-8


class EngineWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websockets protocol; invalid UTF-8 text reaches the app marked."""

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type != "text" or self.close_sent:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        event: dict[str, Any]
        try:
            event = {"type": "websocket.receive", "text": data.decode()}
        except UnicodeDecodeError:
            event = {"type": "websocket.receive", "bytes": bytes(data), INVALID_UTF8: True}
        self.queue.put_nowait(event)  # type: ignore[arg-type]
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()


WS_PROTOCOL = EngineWebSocketProtocol
