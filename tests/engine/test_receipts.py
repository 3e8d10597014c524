"""Receipts for the gateway (``tutor_contract.relay``): exact sequences, and none without asking."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from tutor_contract.relay import (
    RECEIPT_PREFIX,
    RELAY_HEADER,
    RELAY_HELLO_HEADER,
    Receipt,
    parse_receipt,
)
from tutor_engine.backends import Backends
from tutor_engine.backends.mock import MockASR, MockLLM, MockTTS

from tests.servers import RunningServer

from .conftest import engine, serve

RELAY = {RELAY_HEADER: "1"}
TEXT = '{{"type": "text", "content": "{}"}}'


@pytest.fixture
def slow_engine() -> Iterator[RunningServer]:
    """The mock LLM takes 0.1 s per word (about 2 s a reply), so turns can be cut."""
    backends = Backends(llm=MockLLM(3, delay_s=0.1), asr=MockASR(), tts=MockTTS())
    with serve(engine(backends, tutor_id=3)) as running:
        yield running


def label(frame: str) -> str:
    """``started 2`` / ``done 2`` (`` s`` when streaming) for a receipt, else the message type."""
    receipt = parse_receipt(frame)
    if receipt is None:
        return json.loads(frame)["type"]
    kind = "started" if receipt.started else "done"
    return f"{kind} {receipt.seq}" + (" s" if receipt.stream else "")


async def read_until(ws: Any, last: str) -> list[str]:
    """Labels of the frames up to and including ``last``; runs of text_delta count once."""
    seen: list[str] = []
    while not seen or seen[-1] != last:
        async with asyncio.timeout(60):
            got = label(await ws.recv())
        if not (got == "text_delta" and seen and seen[-1] == "text_delta"):
            seen.append(got)
    return seen


async def read_until_all(ws: Any, wanted: set[str]) -> list[str]:
    """Labels of the frames until every label in ``wanted`` has been seen."""
    seen: list[str] = []
    while not wanted <= set(seen):
        async with asyncio.timeout(60):
            seen.append(label(await ws.recv()))
    return seen


async def test_text_turns_are_started_then_done_after_their_reply(
    mock_engine: RunningServer,
) -> None:
    async with websockets.connect(f"{mock_engine.ws}/ws/r1", additional_headers=RELAY) as ws:
        await ws.send(TEXT.format("one"))
        await ws.send(TEXT.format("two"))
        assert await read_until(ws, "done 2") == [
            "started 1", "text", "done 1", "started 2", "text", "done 2",
        ]  # fmt: skip


async def test_a_gateway_that_asks_gets_receipt_zero_as_soon_as_the_connection_is_open(
    mock_engine: RunningServer,
) -> None:
    headers = {**RELAY, RELAY_HELLO_HEADER: "1"}
    async with websockets.connect(f"{mock_engine.ws}/ws/r0", additional_headers=headers) as ws:
        assert await read_until(ws, "done 0") == ["done 0"]
        await ws.send(TEXT.format("one"))
        assert await read_until(ws, "done 1") == ["started 1", "text", "done 1"]


async def test_rejected_frames_and_options_get_only_done(mock_engine: RunningServer) -> None:
    async with websockets.connect(f"{mock_engine.ws}/ws/r2", additional_headers=RELAY) as ws:
        await ws.send("not json")
        await ws.send(b"\x00binary")
        await ws.send('{"type": "options", "stream": true}')
        await ws.send(TEXT.format("now streaming"))
        assert await read_until(ws, "done 4 s") == [
            "error", "done 1", "error", "done 2", "options", "done 3 s",
            "started 4 s", "text_delta", "text", "done 4 s",
        ]  # fmt: skip


async def test_a_barge_in_settles_the_cut_reply_before_the_next_starts(
    slow_engine: RunningServer,
) -> None:
    url = f"{slow_engine.ws}/ws/r3?stream=1"
    async with websockets.connect(url, additional_headers=RELAY) as ws:
        await ws.send(TEXT.format("tell me a long story"))
        assert await read_until(ws, "text_delta") == ["started 1 s", "text_delta"]
        await ws.send(TEXT.format("stop"))
        after = await read_until(ws, "done 2 s")
        if after[0] == "text_delta":  # more of the first reply, sent before "stop" arrived
            after.pop(0)
        assert after == [
            "interrupted", "done 1 s", "started 2 s", "text_delta", "text", "done 2 s",
        ]  # fmt: skip


async def test_delete_settles_queued_frames_then_the_cancelled_turn(
    slow_engine: RunningServer,
) -> None:
    async with websockets.connect(f"{slow_engine.ws}/ws/r4", additional_headers=RELAY) as ws:
        for text in ("first", "second", "third"):
            await ws.send(TEXT.format(text))
        await ws.send("{}")  # answered by the reader at once: frames 2 and 3 are queued by then
        assert sorted(await read_until_all(ws, {"started 1", "done 4"})) == [
            "done 4",
            "error",
            "started 1",
        ]
        async with httpx.AsyncClient(base_url=slow_engine.http) as http:
            assert (await http.delete("/sessions/r4")).status_code == 204
        assert await read_until(ws, "done 1") == ["done 2", "done 3", "done 1"]
        await ws.send(TEXT.format("hello?"))
        assert await read_until(ws, "done 5") == ["started 5", "error", "done 5"]


async def test_without_the_header_no_receipt_is_ever_sent(slow_engine: RunningServer) -> None:
    async with websockets.connect(f"{slow_engine.ws}/ws/r5") as ws:
        await ws.send("not json")
        await ws.send(TEXT.format("plain"))
        await ws.send('{"type": "options", "stream": true}')
        await ws.send(TEXT.format("tell me a long story"))
        frames: list[str] = []
        while len([f for f in frames if '"text_delta"' in f]) < 1:
            frames.append(await ws.recv())
        await ws.send(TEXT.format("stop"))
        while '"final":true' not in frames[-1].replace(" ", ""):
            frames.append(await ws.recv())
    assert not any(f.startswith(RECEIPT_PREFIX) for f in frames)
    types = [json.loads(f)["type"] for f in frames]
    assert types[:3] == ["error", "text", "options"] and "interrupted" in types


async def test_receipts_carry_what_the_next_connection_must_be_told(
    mock_engine: RunningServer,
) -> None:
    """Reply audio, the last reply id, and an open audio stream (which holds the connection)."""
    frames = [
        '{"type": "options", "audio_format": "pcm16", "sample_rate": 24000}',
        TEXT.format("one"),
        '{"type": "audio_start", "vad": false}',
        '{"type": "audio_cancel"}',
    ]
    receipts: list[Receipt] = []
    async with websockets.connect(f"{mock_engine.ws}/ws/r9", additional_headers=RELAY) as ws:
        for seq, frame in enumerate(frames, 1):  # one at a time: each waits for its done
            await ws.send(frame)
            while not receipts or (receipts[-1].seq, receipts[-1].started) != (seq, False):
                async with asyncio.timeout(60):
                    if (receipt := parse_receipt(await ws.recv())) is not None:
                        receipts.append(receipt)
    assert receipts == [
        Receipt(1, False, False, pcm16=24000),
        Receipt(2, True, False, pcm16=24000),
        Receipt(2, False, False, pcm16=24000, reply=1),
        Receipt(3, False, False, pcm16=24000, reply=1, held=True),
        Receipt(4, False, False, pcm16=24000, reply=1, held=True),
    ]
