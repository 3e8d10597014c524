"""The engine's limits over real sockets: every bad frame gets an error and the connection goes
on; a session's waiting messages are bounded; turns are shared fairly; DELETE is final."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI
from tutor_engine.backends import Backends
from tutor_engine.backends.mock import MockASR, MockLLM, MockTTS

from tests.servers import RunningServer

from .conftest import engine, recv, recv_until, serve

REJECTED = "frame rejected"


def slow_engine(delay_s: float = 0.05, **settings: Any) -> FastAPI:
    """Mock backends whose LLM takes ``delay_s`` per word (about 20 words a reply)."""
    backends = Backends(llm=MockLLM(5, delay_s=delay_s), asr=MockASR(), tts=MockTTS())
    return engine(backends, tutor_id=5, **settings)


@pytest.fixture
def small_engine() -> Iterator[RunningServer]:
    with serve(engine(max_message_bytes=64 * 1024)) as running:
        yield running


BAD_FRAMES: list[tuple[str | bytes, str]] = [
    ("[" * 10_000 + "]" * 10_000, "nested too deeply"),
    ('{"type": "text", "content": "hi", "n": ' + "7" * 5000 + "}", "too long"),
    ('{"type": "text", "content": "hi", "n": NaN}', "NaN"),
    ('{"type": "text", "content": "hi", "n": Infinity}', "Infinity"),
    ('{"type": "text", "content": "\\udc80"}', "not valid Unicode"),
    (b"\x00\x01binary", "JSON text"),
    ("x" * 100_000, "too large"),
]


async def test_every_bad_frame_gets_an_error_one_log_line_and_the_connection_goes_on(
    small_engine: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tutor_engine")
    async with websockets.connect(f"{small_engine.ws}/ws/bad", max_size=None) as ws:
        for frame, needle in BAD_FRAMES:
            await ws.send(frame)
            error = await recv(ws)
            assert error["type"] == "error" and needle in error["content"], (needle, error)
            assert set(error) == {"type", "content", "timestamp"}
            await ws.send('{"type": "text", "content": "still there?"}')
            assert (await recv(ws))["type"] == "text"
        # Invalid UTF-8 in a text frame (no browser sends it; a raw client can).
        await ws.send(b'{"type": "text", "content": "\xff\xfe"}', text=True)
        error = await recv(ws)
        assert error["type"] == "error" and "not valid UTF-8" in error["content"]
        await ws.send('{"type": "text", "content": "and now?"}')
        assert (await recv(ws))["type"] == "text"
    rejected = [r for r in caplog.records if REJECTED in r.getMessage()]
    assert len(rejected) == len(BAD_FRAMES) + 1
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in rejected)
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_frame_over_twice_the_limit_is_closed_by_the_transport(
    small_engine: RunningServer,
) -> None:
    async with websockets.connect(f"{small_engine.ws}/ws/huge", max_size=None) as ws:
        await ws.send("x" * (2 * 64 * 1024 + 1))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd.code == 1009


async def test_a_session_that_sends_too_much_gets_errors_and_its_replies_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tutor_engine")
    with serve(slow_engine(0.02, max_pending_turns=2)) as running:
        async with websockets.connect(f"{running.ws}/ws/flood") as ws:
            for i in range(10):
                await ws.send(json.dumps({"type": "text", "content": f"message {i}"}))
            answers = [await recv(ws) for _ in range(10)]
            texts = [a["content"] for a in answers if a["type"] == "text"]
            errors = [a["content"] for a in answers if a["type"] == "error"]
            # One being answered plus two waiting; the other seven were dropped at once.
            assert [t.split("heard: ")[1].split(".")[0] for t in texts] == [
                "message 0",
                "message 1",
                "message 2",
            ]
            assert len(errors) == 7
            assert all(e.startswith("Too many messages waiting: 2 are already") for e in errors)
            await ws.send('{"type": "text", "content": "after the flood"}')
            assert "after the flood" in (await recv(ws))["content"]
    busy = [r for r in caplog.records if REJECTED in r.getMessage() and "(busy)" in r.getMessage()]
    assert len(busy) == 7


async def wait_metric(http: str, name: str, value: float) -> None:
    async with httpx.AsyncClient(base_url=http) as client:
        for _ in range(600):
            text = (await client.get("/metrics")).text
            if f'{name}{{tutor_id="5"}} {value}' in text:  # slow_engine serves tutor 5
                return
            await asyncio.sleep(0.01)
    raise AssertionError(f"{name} never reached {value}")


async def test_turns_of_different_sessions_interleave_first_come_first_served() -> None:
    # One turn slot: a session that queued three messages gets them answered one at a time,
    # and a session arriving meanwhile is answered right after the turn in flight.
    with serve(slow_engine(0.02, max_concurrent_turns=1)) as running:
        async with (
            websockets.connect(f"{running.ws}/ws/busy") as busy,
            websockets.connect(f"{running.ws}/ws/calm") as calm,
        ):
            for i in range(3):
                await busy.send(json.dumps({"type": "text", "content": f"busy {i}"}))
            await wait_metric(running.http, "tutor_engine_turns_running", 1.0)
            await calm.send('{"type": "text", "content": "calm"}')
            await wait_metric(running.http, "tutor_engine_turns_waiting", 1.0)
            arrived: list[str] = []

            async def read(ws: Any, count: int) -> None:
                for _ in range(count):
                    arrived.append((await recv(ws))["content"].split("heard: ")[1].split(".")[0])

            await asyncio.gather(read(busy, 3), read(calm, 1))
    assert arrived == ["busy 0", "calm", "busy 1", "busy 2"]


async def test_two_connections_of_one_session_still_take_turns() -> None:
    with serve(slow_engine(0.02, max_concurrent_turns=4)) as running:
        async with (
            websockets.connect(f"{running.ws}/ws/twice") as one,
            websockets.connect(f"{running.ws}/ws/twice") as two,
        ):
            await one.send('{"type": "text", "content": "first"}')
            await wait_metric(running.http, "tutor_engine_turns_running", 1.0)
            await two.send('{"type": "text", "content": "second"}')
            second = await recv(two)
            first = await recv(one)
    # The second connection's turn waited for the first: it saw its history.
    assert "turn 1," in first["content"] and "turn 2, with 2 earlier" in second["content"]


async def test_delete_cancels_the_reply_in_flight_and_history_stays_gone() -> None:
    app = slow_engine(0.05)
    store = app.state.engine.history.store
    with serve(app) as running:
        async with websockets.connect(f"{running.ws}/ws/gone?stream=1") as ws:
            await ws.send('{"type": "text", "content": "tell me a long story"}')
            assert (await recv(ws))["type"] == "text_delta"
            async with httpx.AsyncClient(base_url=running.http) as http:
                assert (await http.delete("/sessions/gone")).status_code == 204
            assert await store.load("gone") is None  # deleted, and tombstoned
            await ws.send('{"type": "text", "content": "are you there?"}')
            after = await recv_until(ws, "error")
            assert {m["type"] for m in after} <= {"text_delta", "error"}  # no final text
            assert after[-1]["content"].startswith("This session has ended")
            await asyncio.sleep(1.5)  # longer than the cancelled reply would have taken
            assert await store.load("gone") is None
            assert await store.append("gone", []) is False  # the tombstone still refuses writes
        async with websockets.connect(f"{running.ws}/ws/other") as ws:
            await ws.send('{"type": "text", "content": "hello"}')
            assert "turn 1, with 0 earlier" in (await recv(ws))["content"]


async def test_an_audio_turn_is_refused_when_its_transcript_is_too_long() -> None:
    from tutor_engine.backends.mock import make_wav

    with serve(engine(max_text_chars=50)) as running:
        async with websockets.connect(f"{running.ws}/ws/talkative", max_size=None) as ws:
            wav = make_wav("word " * 40)
            await ws.send(json.dumps({"type": "audio", "data": base64.b64encode(wav).decode()}))
            error = await recv(ws)
            assert error["type"] == "error" and error["content"].startswith("Speech too long")


def test_health_answers_while_a_connection_floods_large_frames(mock_engine: RunningServer) -> None:
    from websockets.sync.client import connect

    frame = "[" + ",".join(["{}"] * (2 * 2**20 // 3)) + "]"  # 2 MiB of tiny objects
    with connect(f"{mock_engine.ws}/ws/flood", max_size=None) as ws:
        for _ in range(10):
            ws.send(frame)
        slowest = 0.0
        for _ in range(10):
            started = time.perf_counter()
            assert httpx.get(f"{mock_engine.http}/healthz", timeout=30).status_code == 200
            slowest = max(slowest, time.perf_counter() - started)
        errors = [json.loads(ws.recv(timeout=60)) for _ in range(10)]
    assert all("too complex" in e["content"] for e in errors)
    assert slowest < 5  # generous; before: the event loop parsed each frame itself
