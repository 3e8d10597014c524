"""The seed's WebSocket message protocol: parsing client frames and building server frames.

Client → server: ``{"type": "text", "content": str}`` and ``{"type": "audio", "data": base64}``.
Server → client: ``text``, ``transcription``, ``audio`` and ``error``, each with a ``timestamp``.

Extensions old clients never see (documented in the README):

- an audio message may say ``"format": "pcm16"`` for raw 16 kHz mono PCM16 (other formats
  are recognised from the bytes);
- ``{"type": "options", "stream": true}`` opts a connection into incremental events:
  ``text_delta``, ``audio_chunk`` (one per sentence), a final ``text`` with ``"final": true``,
  and ``interrupted`` when a new message cancels a reply in flight (barge-in);
- ``options`` may also carry ``"events": true|false``: the gateway's opt-in to ``status``
  messages while the client waits for an engine. The engine accepts and ignores it; an options
  message that names ``events`` but not ``stream`` leaves the streaming mode as it was.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import wave
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
    """A user's recorded speech as an encoded audio file (raw PCM16 arrives wrapped as WAV)."""

    data: bytes


@dataclass(frozen=True)
class OptionsIn:
    """A client's choice of protocol extensions for the rest of the connection."""

    stream: bool | None  # None: unchanged (the message only named the gateway's ``events``)
    events: bool | None = None  # the gateway's opt-in; nothing for the engine to do


PCM16_RATE = 16_000
# Formats an audio message may name; all but raw PCM are recognised from the bytes anyway.
AUDIO_FORMATS = ("wav", "webm", "ogg", "mp3", "flac", "m4a", "mp4", "pcm16")


def pcm16_to_wav(pcm: bytes, sample_rate: int = PCM16_RATE) -> bytes:
    """Raw little-endian mono PCM16 wrapped in a WAV header."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
    return buf.getvalue()


class ProtocolError(ValueError):
    """A client frame that cannot be served; its text is sent back as an ``error`` message."""


# Frames longer than this are parsed off the event loop, and must be shaped like an audio
# message: a text message that long is over any ``max_text_chars`` anyway (see below).
LARGE_FRAME_CHARS = 64 * 1024
# JSON structure characters (``{ [ , :``) a large frame may hold: an audio message has a few
# fields, never thousands of values (which would cost ~20x the frame in Python objects).
LARGE_FRAME_MAX_STRUCTURE = 64
MAX_NUMBER_CHARS = 64  # no field of the protocol is a number: refuse long ones before int()
BINARY_FRAME = "Binary frames are not accepted: send each message as JSON text (a text frame)"
INVALID_UTF8 = "Text frame is not valid UTF-8: send each message as JSON text"


def large_frame_chars(max_text_chars: int) -> int:
    """Length above which a frame cannot be a text message (12 chars per escaped character)."""
    return max(LARGE_FRAME_CHARS, 12 * max_text_chars + 1024)


def _no_constant(name: str) -> Any:
    raise ProtocolError(f"Invalid JSON: {name} is not a JSON number")


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ProtocolError(f"Invalid JSON: a number of {len(text)} digits is too long")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise ProtocolError(f"Invalid JSON: a number of {len(text)} characters is too long")
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError("Invalid JSON: number out of range")
    return value


_DECODER = json.JSONDecoder(parse_int=_int, parse_float=_float, parse_constant=_no_constant)


def _describe(value: object) -> str:
    """A short, one-line, printable description of a client-supplied value."""
    if isinstance(value, str):
        return repr(value[:40] + ("..." if len(value) > 40 else ""))
    if value is None or isinstance(value, bool | int | float):
        return repr(value)[:40]
    return f"a JSON {'object' if isinstance(value, dict) else 'array'}"


def _load(frame: str, max_text_chars: int) -> Any:
    """``json.loads`` that refuses what the standard module would crash on or accept silently."""
    if len(frame) > large_frame_chars(max_text_chars):
        structure = sum(frame.count(c) for c in "{[,:")
        if structure > LARGE_FRAME_MAX_STRUCTURE:
            raise ProtocolError(
                f"Message too complex: a message of {len(frame)} characters may only be an "
                f"audio message (it has {structure} JSON separators, limit "
                f"{LARGE_FRAME_MAX_STRUCTURE})"
            )
    try:
        return _DECODER.decode(frame)
    except ProtocolError:
        raise
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"Invalid JSON: {exc.msg} at position {exc.pos}") from exc
    except RecursionError as exc:
        raise ProtocolError("Invalid JSON: nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer over sys.get_int_max_str_digits()
        raise ProtocolError("Invalid JSON: a value is out of range") from exc


def _valid_unicode(text: str) -> bool:
    """Whether ``text`` can be sent back as UTF-8 (JSON allows lone surrogates; UTF-8 does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_client_frame(
    frame: str | bytes, *, max_bytes: int, max_text_chars: int
) -> TextIn | AudioIn | OptionsIn:
    """Validate one client frame and return the message it carries, or raise ProtocolError.

    Pure and bounded: a frame of ``n`` characters costs O(n) time and about ``n`` bytes of
    memory whatever it holds (deep nesting, huge numbers, thousands of values are refused).
    """
    if len(frame) > max_bytes:
        raise ProtocolError(f"Message too large: {len(frame)} bytes (limit {max_bytes})")
    if not isinstance(frame, str):
        raise ProtocolError(BINARY_FRAME)
    payload = _load(frame, max_text_chars)
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
        if not _valid_unicode(content):
            raise ProtocolError("Text message is not valid Unicode (it has a lone surrogate)")
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
        return AudioIn(data=_audio_file(audio, payload.get("format")))
    if kind == "options":
        events = payload.get("events")
        if events is not None and not isinstance(events, bool):
            raise ProtocolError("Options 'events' must be true or false")
        stream = payload.get("stream", None if "events" in payload else False)
        if stream is not None and not isinstance(stream, bool):
            raise ProtocolError("Options 'stream' must be true or false")
        return OptionsIn(stream=stream, events=events)
    if kind is None:
        raise ProtocolError("Message has no 'type' (expected 'text' or 'audio')")
    raise ProtocolError(f"Unknown message type: {_describe(kind)} (expected 'text' or 'audio')")


def _audio_file(audio: bytes, fmt: object) -> bytes:
    """The audio as a file the recogniser can decode, given the client's optional format."""
    if fmt is None:
        return audio
    if not isinstance(fmt, str) or fmt.lower() not in AUDIO_FORMATS:
        raise ProtocolError(
            f"Unknown audio 'format' {_describe(fmt)} (expected one of {', '.join(AUDIO_FORMATS)})"
        )
    if fmt.lower() != "pcm16":
        return audio
    if len(audio) % 2:
        raise ProtocolError("Raw pcm16 audio must have an even number of bytes")
    return pcm16_to_wav(audio)


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


# Incremental events, sent only to connections that opted in with an ``options`` message.


def options_message(stream: bool) -> dict[str, Any]:
    """Acknowledges a client's ``options``."""
    return {"type": "options", "stream": stream, "timestamp": timestamp()}


def text_delta_message(reply_id: int, delta: str) -> dict[str, Any]:
    """A piece of the reply's text as the model produces it."""
    return {
        "type": "text_delta",
        "reply_id": reply_id,
        "content": delta,
        "role": "assistant",
        "timestamp": timestamp(),
    }


def audio_chunk_message(reply_id: int, index: int, sentence: str, wav: bytes) -> dict[str, Any]:
    """One sentence of the reply as speech (a complete base64 WAV), in order by ``index``."""
    return {
        **audio_message(sentence, wav),
        "type": "audio_chunk",
        "reply_id": reply_id,
        "index": index,
    }


def final_message(reply_id: int, content: str, audio_chunks: int) -> dict[str, Any]:
    """The whole reply once it is complete: the seed's ``text`` message plus stream fields."""
    return {
        **text_message(content),
        "reply_id": reply_id,
        "final": True,
        "audio_chunks": audio_chunks,
    }


def interrupted_message(reply_id: int, partial: str) -> dict[str, Any]:
    """A reply cut short by a newer user message; ``content`` is what had been produced."""
    return {
        "type": "interrupted",
        "reply_id": reply_id,
        "content": partial,
        "role": "assistant",
        "reason": "A new message arrived; the previous reply was cancelled",
        "timestamp": timestamp(),
    }
