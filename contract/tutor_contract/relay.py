"""The gateway↔engine hop: what an engine tells the gateway that relays a client to it.

A gateway that connects with ``RELAY_HEADER: 1`` asks the engine for receipts: the engine
numbers the client frames it receives on that connection 1, 2, 3, … and sends, besides the
client's own messages, small text frames that begin with ``RECEIPT_PREFIX``:

- ``{"type":"tutor.relay","started":k,"stream":s}`` when the turn for frame ``k`` begins (its
  reply may be under way from here on);
- ``{"type":"tutor.relay","done":k,"stream":s}`` once frame ``k`` is settled: answered,
  rejected with an ``error``, interrupted, or discarded;
- ``{"type":"tutor.relay","done":0,"stream":s}`` first, as soon as the connection is open, if
  the gateway also sent ``RELAY_HELLO_HEADER: 1`` (older gateways do not read it): from then on
  the gateway knows that the engine receipts its frames, so a frame it never saw ``started``
  was never started, even if the connection ends before its first receipt (an engine that
  began to drain just then).

``stream`` is the connection's streaming mode after that frame; the optional ``pcm16`` (the
sample rate of raw PCM16 reply audio, absent for WAV), ``reply`` (the last ``reply_id`` given
on the connection, absent for none) and ``held`` (``true`` while an audio stream is open) are
the rest of what the connection has been told. The gateway consumes receipts and never
forwards them, so clients never see them; an engine reached without the header never sends
them. With receipts the gateway knows, when an engine goes away, which frames were never
started (sent again to the next engine), which one was in flight (its reply ends with an
``error``, or ``interrupted`` on a streaming connection), and how to open the next connection
where this one left off (``resume_params``): the same mode and reply audio, ``reply_id``s
going on from the last one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeGuard

RELAY_HEADER = "X-Tutor-Relay"
RELAY_HELLO_HEADER = "X-Tutor-Relay-Hello"
RECEIPT_TYPE = "tutor.relay"
RECEIPT_PREFIX = '{"type":"tutor.relay",'
# Receipts are tiny; anything longer that starts like one is a client-visible frame.
MAX_RECEIPT_CHARS = 160
# The largest reply id a receipt reports, and an engine connection may be asked to go on from.
MAX_REPLY_ID = 2**31 - 1


@dataclass(frozen=True)
class Receipt:
    """One receipt: frame ``seq`` has ``started`` (else: is done; 0: the connection is open);
    the connection's state after it: ``stream`` mode, ``pcm16`` reply audio rate (None: WAV),
    last ``reply`` id given (0: none), and whether it ``held`` an open audio stream."""

    seq: int
    started: bool
    stream: bool
    pcm16: int | None = None
    reply: int = 0
    held: bool = False


def receipt_frame(
    seq: int,
    *,
    started: bool,
    stream: bool,
    pcm16: int | None = None,
    reply: int = 0,
    held: bool = False,
) -> str:
    """The text frame an engine sends for frame ``seq`` (compact, prefix first; the optional
    fields only when they say something)."""
    key = "started" if started else "done"
    extra = f',"pcm16":{int(pcm16)}' if pcm16 else ""
    extra += f',"reply":{int(reply)}' if reply else ""
    extra += ',"held":true' if held else ""
    return f'{RECEIPT_PREFIX}"{key}":{int(seq)},"stream":{"true" if stream else "false"}{extra}}}'


def _hop_frame(frame: str | bytes, prefix: str, max_chars: int) -> dict[str, Any] | None:
    """The JSON object of a short text frame that starts with ``prefix``, else ``None``."""
    if not isinstance(frame, str) or len(frame) > max_chars or not frame.startswith(prefix):
        return None
    try:
        return json.loads(frame)  # an object: the prefix opens one
    except ValueError:
        return None


def parse_receipt(frame: str | bytes) -> Receipt | None:
    """The receipt in an engine frame, or ``None`` for any frame meant for the client."""
    if (body := _hop_frame(frame, RECEIPT_PREFIX, MAX_RECEIPT_CHARS)) is None:
        return None
    started = "started" in body
    seq = body.get("started" if started else "done")
    if not _count(seq) or (started and seq < 1):
        return None
    pcm16, reply = body.get("pcm16"), body.get("reply", 0)
    return Receipt(
        seq,
        started,
        body.get("stream") is True,
        pcm16=pcm16 if _count(pcm16) and pcm16 > 0 else None,
        reply=reply if _count(reply) and reply <= MAX_REPLY_ID else 0,
        held=body.get("held") is True,
    )


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def resume_params(latest: Receipt) -> dict[str, str]:
    """The query parameters that open the next engine connection where the one whose
    ``latest`` receipt this is left off."""
    params = {
        "stream": "1" if latest.stream else "0",
        "audio_format": "wav" if latest.pcm16 is None else "pcm16",
        "reply_base": str(latest.reply),
    }
    if latest.pcm16 is not None:
        params["sample_rate"] = str(latest.pcm16)
    return params


# Trace context, gateway → engine (only while tracing is on, only on relay connections): right
# before a client frame the gateway may send ``{"type":"tutor.trace","traceparent":…}`` (W3C
# Trace Context). The engine consumes it, does not number it, and makes the turn of the next
# client frame a child of that context.
TRACE_TYPE = "tutor.trace"
TRACE_PREFIX = '{"type":"tutor.trace",'
MAX_TRACE_CHARS = 768  # traceparent is 55 characters; tracestate is at most 512
_TRACE_KEYS = ("traceparent", "tracestate")


def trace_frame(carrier: dict[str, str]) -> str:
    """The text frame carrying ``carrier`` (what a W3C propagator injected) to the engine."""
    fields = {k: carrier[k] for k in _TRACE_KEYS if carrier.get(k)}
    return TRACE_PREFIX + json.dumps(fields, separators=(",", ":"))[1:]


def parse_trace_frame(frame: str | bytes) -> dict[str, str] | None:
    """The trace carrier in a gateway frame, or ``None`` for any frame from the client."""
    if (body := _hop_frame(frame, TRACE_PREFIX, MAX_TRACE_CHARS)) is None:
        return None
    carrier = {k: v for k in _TRACE_KEYS if isinstance(v := body.get(k), str)}
    return carrier if "traceparent" in carrier else None
