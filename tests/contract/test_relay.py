"""The gateway↔engine receipts (``tutor_contract.relay``) as pure logic."""

from __future__ import annotations

import json

import pytest
from tutor_contract.relay import (
    MAX_RECEIPT_CHARS,
    MAX_REPLY_ID,
    RECEIPT_PREFIX,
    Receipt,
    parse_receipt,
    receipt_frame,
    resume_params,
)


def test_a_receipt_with_the_whole_connection_state_round_trips_within_its_bound() -> None:
    largest = Receipt(MAX_REPLY_ID, False, False, pcm16=48_000, reply=MAX_REPLY_ID, held=True)
    frame = receipt_frame(
        largest.seq, started=False, stream=False, pcm16=48_000, reply=MAX_REPLY_ID, held=True
    )
    assert len(frame) <= MAX_RECEIPT_CHARS and parse_receipt(frame) == largest
    assert receipt_frame(3, started=True, stream=True) == (
        '{"type":"tutor.relay","started":3,"stream":true}'
    ), "an engine with nothing more to say sends what older gateways read"


@pytest.mark.parametrize(
    "fields",
    [
        {"pcm16": 0, "reply": -1, "held": "yes"},
        {"pcm16": "24000", "reply": True, "held": 1},
        {"pcm16": False, "reply": MAX_REPLY_ID + 1},
    ],
)
def test_malformed_state_fields_read_as_their_defaults(fields: dict[str, object]) -> None:
    frame = RECEIPT_PREFIX + json.dumps({"done": 2, "stream": True, **fields})[1:]
    assert parse_receipt(frame) == Receipt(2, False, True)


def test_receipt_zero_says_the_connection_is_open_and_is_never_started() -> None:
    hello = receipt_frame(0, started=False, stream=True)
    assert parse_receipt(hello) == Receipt(0, False, True)
    assert parse_receipt(receipt_frame(0, started=True, stream=True)) is None


def test_the_next_connection_is_opened_where_the_last_left_off() -> None:
    assert resume_params(Receipt(4, False, True, pcm16=24_000, reply=7)) == {
        "stream": "1",
        "audio_format": "pcm16",
        "sample_rate": "24000",
        "reply_base": "7",
    }
    assert resume_params(Receipt(1, True, False)) == {
        "stream": "0",
        "audio_format": "wav",
        "reply_base": "0",
    }
