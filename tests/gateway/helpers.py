"""Client-side helpers for gateway tests: sessions over HTTP, conversations over WebSocket."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.servers import RunningServer


def create_session(
    server: RunningServer, tutor_id: int = 1, student_id: int = 1, **extra: Any
) -> dict[str, Any]:
    """POST /v1/sessions and return the 201 body."""
    response = httpx.post(
        f"{server.http}/v1/sessions",
        json={"tutor_id": tutor_id, "student_id": student_id, **extra},
    )
    assert response.status_code == 201, response.text
    return response.json()


def open_ws(
    server: RunningServer, session: dict[str, Any], path: str = "/ws/ws", token: str | None = None
) -> ClientConnection:
    """Connect to a session's WebSocket on this server (``path`` picks unified or split)."""
    token = session["engine_token"] if token is None else token
    return connect(
        f"{server.ws}{path}/{session['session_id']}?token={token}",
        max_size=None,
        open_timeout=30,
    )


def recv(ws: ClientConnection, timeout: float = 60) -> dict[str, Any]:
    """The next message as a dict."""
    return json.loads(ws.recv(timeout=timeout))


def say(ws: ClientConnection, text: str) -> dict[str, Any]:
    """Send a text message and return the reply."""
    ws.send(json.dumps({"type": "text", "content": text}))
    return recv(ws)


def send_audio(ws: ClientConnection, wav: bytes) -> None:
    """Send an audio message (base64 of ``wav``)."""
    ws.send(json.dumps({"type": "audio", "data": base64.b64encode(wav).decode()}))
