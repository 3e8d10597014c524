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
  message that names ``events`` but not ``stream`` leaves the streaming mode as it was;
- ``options`` may carry ``"audio_format": "pcm16"`` and ``"sample_rate"``: reply audio then
  comes as raw PCM16 at that rate, with ``format`` and ``sample_rate`` fields (or, from the
  start, the connection's query: ``?audio_format=pcm16&sample_rate=24000``, ``query_audio``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .audio import PCM16_RATE, pcm16_to_wav


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
    audio_format: str | None = None  # reply audio: "wav" or "pcm16"; None: unchanged
    sample_rate: int | None = None  # of pcm16 reply audio; None: unchanged


@dataclass(frozen=True)
class AudioStartIn:
    """Opens (or restarts) the connection's streamed audio input (``audio_start``)."""

    vad: bool = True
    silence_ms: int | None = None  # None: ENGINE_VAD_SILENCE_MS
    barge_in: bool = True


@dataclass(frozen=True)
class AudioAppendIn:
    """A chunk of streamed audio: raw little-endian mono PCM16 at 16 kHz (binary frame or
    ``audio_append``)."""

    pcm: bytes


@dataclass(frozen=True)
class AudioCommitIn:
    """``audio_commit``: the audio since the last turn is the user's turn now."""


@dataclass(frozen=True)
class AudioCancelIn:
    """``audio_cancel``: drop the audio since the last turn."""


@dataclass(frozen=True)
class SpeechIn:
    """A streamed utterance, already 16 kHz float32 samples (nothing left to decode)."""

    samples: Any
    seconds: float


AudioStreamIn = AudioStartIn | AudioAppendIn | AudioCommitIn | AudioCancelIn
ClientMessage = TextIn | AudioIn | OptionsIn | AudioStreamIn  # what a client frame may carry
AUDIO_STREAM_TYPES = ("audio_start", "audio_append", "audio_commit", "audio_cancel")
SILENCE_MS_RANGE = (100, 5000)

# Reply audio a connection may ask for with ``options``: WAV files (the default) or raw PCM16.
OUTPUT_FORMATS = ("wav", "pcm16")
OUTPUT_RATES = (8_000, 16_000, 22_050, 24_000, 44_100, 48_000)
# Formats an audio message may name; all but raw PCM are recognised from the bytes anyway.
AUDIO_FORMATS = ("wav", "webm", "ogg", "mp3", "flac", "m4a", "mp4", "pcm16")


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


def parse_client_frame(frame: str | bytes, *, max_bytes: int, max_text_chars: int) -> ClientMessage:
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
        audio = _base64_data(payload, "Audio message", "Audio")
        if not audio:
            raise ProtocolError("Audio message is empty")
        return AudioIn(data=_audio_file(audio, payload.get("format")))
    if kind == "options":
        events = payload.get("events")
        if events is not None and not isinstance(events, bool):
            raise ProtocolError("Options 'events' must be true or false")
        others = {"events", "audio_format", "sample_rate"} & payload.keys()
        stream = payload.get("stream", None if others else False)
        if stream is not None and not isinstance(stream, bool):
            raise ProtocolError("Options 'stream' must be true or false")
        return OptionsIn(stream, events, *_output_audio(payload))
    if kind in AUDIO_STREAM_TYPES:
        return _audio_stream_message(kind, payload)
    if kind is None:
        raise ProtocolError("Message has no 'type' (expected 'text' or 'audio')")
    raise ProtocolError(f"Unknown message type: {_describe(kind)} (expected 'text' or 'audio')")


def _base64_data(payload: dict[str, Any], message: str, field: str) -> bytes:
    """The bytes of the message's base64 ``data`` (``message`` and ``field`` name it in errors)."""
    data = payload.get("data")
    if not isinstance(data, str) or not data:
        raise ProtocolError(f"{message} needs a non-empty base64 string 'data'")
    try:
        return base64.b64decode(data, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise ProtocolError(f"{field} 'data' is not valid base64") from exc


def _output_audio(payload: dict[str, Any]) -> tuple[str | None, int | None]:
    """The reply audio format and sample rate an ``options`` message asks for (None: unchanged)."""
    fmt, rate = payload.get("audio_format"), payload.get("sample_rate")
    if fmt is not None and fmt not in OUTPUT_FORMATS:
        raise ProtocolError(
            f"Unknown 'audio_format' {_describe(fmt)} (expected one of {', '.join(OUTPUT_FORMATS)})"
        )
    if rate is not None and (isinstance(rate, bool) or rate not in OUTPUT_RATES):
        raise ProtocolError(
            f"Unsupported 'sample_rate' {_describe(rate)} (expected one of "
            f"{', '.join(map(str, OUTPUT_RATES))})"
        )
    return fmt, rate


def query_audio(fmt: str | None, rate: str | None) -> tuple[str | None, int | None]:
    """The reply audio a connection's ``audio_format`` and ``sample_rate`` query parameters ask
    for, as ``options`` would (None: the default)."""
    number: object = rate
    if rate is not None:
        with contextlib.suppress(ValueError):
            number = int(rate)
    return _output_audio({"audio_format": fmt, "sample_rate": number})


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


def _frame(kind: str, **fields: Any) -> dict[str, Any]:
    """A server message: its ``type``, ``fields``, then the ``timestamp``."""
    return {"type": kind, **fields, "timestamp": timestamp()}


def text_message(content: str) -> dict[str, Any]:
    """The assistant's reply as text."""
    return _frame("text", content=content, role="assistant")


def transcription_message(content: str) -> dict[str, Any]:
    """What the user said, as recognised from their audio."""
    return _frame("transcription", content=content, role="user")


def audio_message(content: str, data: str, pcm16_rate: int | None = None) -> dict[str, Any]:
    """The assistant's reply as speech: its text and base64 ``data``, a WAV file or (with
    ``pcm16_rate``) raw PCM16 at that rate."""
    message = _frame("audio", content=content, data=data, role="assistant")
    if pcm16_rate is not None:
        message |= {"format": "pcm16", "sample_rate": pcm16_rate}
    return message


def error_message(content: str) -> dict[str, Any]:
    """An error the client should show; the connection stays open unless a close follows."""
    return _frame("error", content=content)


# Incremental events, sent only to connections that opted in with an ``options`` message.


def options_message(stream: bool, audio: tuple[str, int] | None = None) -> dict[str, Any]:
    """Acknowledges a client's ``options``; ``audio``: the reply audio's (format, sample rate),
    echoed to a client that named them."""
    message = _frame("options", stream=stream)
    if audio is not None:
        message |= {"audio_format": audio[0], "sample_rate": audio[1]}
    return message


def text_delta_message(reply_id: int, delta: str) -> dict[str, Any]:
    """A piece of the reply's text as the model produces it."""
    return _frame("text_delta", reply_id=reply_id, content=delta, role="assistant")


def audio_chunk_message(
    reply_id: int, index: int, sentence: str, data: str, pcm16_rate: int | None = None
) -> dict[str, Any]:
    """One sentence (or first clause) of the reply as speech, as ``audio_message``'s, in order
    by ``index``."""
    return {
        **audio_message(sentence, data, pcm16_rate),
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
    return _frame(
        "interrupted",
        reply_id=reply_id,
        content=partial,
        role="assistant",
        reason="A new message arrived; the previous reply was cancelled",
    )


# Streamed audio input (opt-in with ``audio_start``; see the README).


def pcm16_chunk(pcm: bytes) -> AudioAppendIn:
    """A binary frame (or decoded ``audio_append``) as a chunk of streamed PCM16."""
    if not pcm:
        raise ProtocolError("Audio chunk is empty")
    if len(pcm) % 2:
        raise ProtocolError("Audio chunk must have an even number of bytes (PCM16)")
    return AudioAppendIn(pcm)


def _flag(payload: dict[str, Any], name: str, default: bool) -> bool:
    value = payload.get(name, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"audio_start '{name}' must be true or false")
    return value


def _audio_stream_message(kind: str, payload: dict[str, Any]) -> AudioStreamIn:
    if kind == "audio_commit":
        return AudioCommitIn()
    if kind == "audio_cancel":
        return AudioCancelIn()
    if kind == "audio_append":
        return pcm16_chunk(_base64_data(payload, "audio_append", "audio_append"))
    fmt, rate = payload.get("format", "pcm16"), payload.get("sample_rate", PCM16_RATE)
    if fmt != "pcm16":
        raise ProtocolError(
            f"audio_start 'format' {_describe(fmt)} is not supported (expected 'pcm16')"
        )
    if rate != PCM16_RATE or isinstance(rate, bool):
        raise ProtocolError(
            f"audio_start 'sample_rate' {_describe(rate)} is not supported (expected {PCM16_RATE})"
        )
    silence = payload.get("silence_ms")
    low, high = SILENCE_MS_RANGE
    if silence is not None and (
        isinstance(silence, bool) or not isinstance(silence, int) or not low <= silence <= high
    ):
        raise ProtocolError(f"audio_start 'silence_ms' must be an integer from {low} to {high}")
    return AudioStartIn(_flag(payload, "vad", True), silence, _flag(payload, "barge_in", True))


def audio_start_message(vad: bool, silence_ms: int, barge_in: bool) -> dict[str, Any]:
    """Acknowledges ``audio_start`` with the values in effect."""
    return _frame(
        "audio_start",
        format="pcm16",
        sample_rate=PCM16_RATE,
        vad=vad,
        silence_ms=silence_ms,
        barge_in=barge_in,
    )


def speech_message(kind: str, audio_ms: int) -> dict[str, Any]:
    """``speech_started`` / ``speech_stopped``: the VAD's verdict, at ``audio_ms`` of the stream."""
    return _frame(kind, audio_ms=audio_ms)
