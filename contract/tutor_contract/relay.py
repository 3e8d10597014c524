"""The gateway↔engine hop: what an engine tells the gateway that relays a client to it.

A gateway that connects with ``RELAY_HEADER: 1`` asks the engine for receipts: the engine
numbers the client frames it receives on that connection 1, 2, 3, … and sends, besides the
client's own messages, small text frames that begin with ``RECEIPT_PREFIX``:

- ``{"type":"tutor.relay","started":k,"stream":s}`` when the turn for frame ``k`` begins (its
  reply may be under way from here on);
- ``{"type":"tutor.relay","done":k,"stream":s}`` once frame ``k`` is settled: answered,
  rejected with an ``error``, interrupted, or discarded.

``stream`` is the connection's streaming mode after that frame. The gateway consumes receipts
and never forwards them, so clients never see them; an engine reached without the header
never sends them. With receipts the gateway knows, when an engine goes away, which frames were
never started (sent again to the next engine), which one was in flight (its reply ends with an
``error``, or ``interrupted`` on a streaming connection) and which mode to reconnect in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

RELAY_HEADER = "X-Tutor-Relay"
RECEIPT_TYPE = "tutor.relay"
RECEIPT_PREFIX = '{"type":"tutor.relay",'
# Receipts are tiny; anything longer that starts like one is a client-visible frame.
MAX_RECEIPT_CHARS = 128


@dataclass(frozen=True)
class Receipt:
    """One receipt: frame ``seq`` has ``started`` (else: is done); ``stream`` mode after it."""

    seq: int
    started: bool
    stream: bool


def receipt_frame(seq: int, *, started: bool, stream: bool) -> str:
    """The text frame an engine sends for frame ``seq`` (compact, prefix first)."""
    key = "started" if started else "done"
    return f'{RECEIPT_PREFIX}"{key}":{int(seq)},"stream":{"true" if stream else "false"}}}'


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
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return None
    return Receipt(seq, started, body.get("stream") is True)


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
