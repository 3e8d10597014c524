"""The seed's WebSocket message protocol: parsing client frames and building server frames.

Client → server: ``{"type": "text", "content": str}`` and ``{"type": "audio", "data": base64}``.
Server → client: ``text``, ``transcription``, ``audio`` and ``error``, each with a ``timestamp``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def timestamp() -> str:
    """Timestamp in the seed's shape: ISO 8601 UTC without offset, e.g. ``2024-12-22T12:00:00``."""
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds")


@dataclass(frozen=True)
class TextIn:
    """A user's typed message."""

    content: str


@dataclass(frozen=True)
class AudioIn:
    """A user's recorded speech, already base64-decoded."""

    data: bytes


class ProtocolError(ValueError):
    """A client frame that cannot be served; its text is sent back as an ``error`` message."""


def parse_client_frame(
    frame: str | bytes, *, max_bytes: int, max_text_chars: int
) -> TextIn | AudioIn:
    """Validate one client frame and return the message it carries, or raise ProtocolError."""
    if len(frame) > max_bytes:
        raise ProtocolError(f"Message too large: {len(frame)} bytes (limit {max_bytes})")
    try:
        payload = json.loads(frame)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"Invalid JSON: {exc.msg if hasattr(exc, 'msg') else exc}") from exc
    if not isinstance(payload, dict):
        raise ProtocolError("Message must be a JSON object with a 'type' field")
    kind = payload.get("type")
    if kind == "text":
        content = payload.get("content")
        if not isinstance(content, str) or not content.strip():
            raise ProtocolError("Text message needs a non-empty string 'content'")
        if len(content) > max_text_chars:
            raise ProtocolError(
                f"Text message too long: {len(content)} characters (limit {max_text_chars})"
            )
        return TextIn(content=content)
    if kind == "audio":
        data = payload.get("data")
        if not isinstance(data, str) or not data:
            raise ProtocolError("Audio message needs a non-empty base64 string 'data'")
        try:
            audio = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError("Audio 'data' is not valid base64") from exc
        if not audio:
            raise ProtocolError("Audio message is empty")
        return AudioIn(data=audio)
    if kind is None:
        raise ProtocolError("Message has no 'type' (expected 'text' or 'audio')")
    raise ProtocolError(f"Unknown message type: {kind!r} (expected 'text' or 'audio')")


def text_message(content: str) -> dict[str, Any]:
    """The assistant's reply as text."""
    return {"type": "text", "content": content, "role": "assistant", "timestamp": timestamp()}


def transcription_message(content: str) -> dict[str, Any]:
    """What the user said, as recognised from their audio."""
    return {"type": "transcription", "content": content, "role": "user", "timestamp": timestamp()}


def audio_message(content: str, wav: bytes) -> dict[str, Any]:
    """The assistant's reply as speech: its text and a base64 WAV."""
    return {
        "type": "audio",
        "content": content,
        "data": base64.b64encode(wav).decode("ascii"),
        "role": "assistant",
        "timestamp": timestamp(),
    }


def error_message(content: str) -> dict[str, Any]:
    """An error the client should show; the connection stays open unless a close follows."""
    return {"type": "error", "content": content, "timestamp": timestamp()}
