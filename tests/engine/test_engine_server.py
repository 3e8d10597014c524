"""The engine over real sockets with mock backends: the seed's messages, readiness, errors."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
import websockets
from tutor_engine.backends import Backends
from tutor_engine.backends.mock import MockASR, MockLLM, MockTTS, make_wav, read_wav_comment

from tests.servers import RunningServer

from .conftest import engine, recv, serve

SEED_KEYS = {
    "text": {"type", "content", "role", "timestamp"},
    "transcription": {"type", "content", "role", "timestamp"},
    "audio": {"type", "content", "data", "role", "timestamp"},
    "error": {"type", "content", "timestamp"},
}


def audio_frame(wav: bytes) -> str:
    return json.dumps({"type": "audio", "data": base64.b64encode(wav).decode()})


async def test_a_plain_client_gets_exactly_the_seed_messages(mock_engine: RunningServer) -> None:
    async with websockets.connect(f"{mock_engine.ws}/ws/s1?kb_id=math-101") as ws:
        await ws.send('{"type": "text", "content": "What is Python?"}')
        text = await recv(ws)
        assert set(text) == SEED_KEYS["text"]
        assert text["content"].startswith("Tutor 0 heard: What is Python?.")

        await ws.send(audio_frame(make_wav("How do loops work?")))
        heard, answer, speech = await recv(ws), await recv(ws), await recv(ws)
        assert [m["type"] for m in (heard, answer, speech)] == ["transcription", "text", "audio"]
        for message in (heard, answer, speech):
            assert set(message) == SEED_KEYS[message["type"]]
        assert heard["content"] == "How do loops work?"
        assert "turn 2, with 2 earlier messages" in answer["content"]
        assert read_wav_comment(base64.b64decode(speech["data"])) == answer["content"]


async def test_bad_input_gets_an_error_and_the_connection_stays_usable(
    mock_engine: RunningServer,
) -> None:
    async with websockets.connect(f"{mock_engine.ws}/ws/s2") as ws:
        for bad in ("not json", '{"type": "video"}', '{"type": "audio", "data": "AAAA"}'):
            await ws.send(bad)
            error = await recv(ws)
            assert set(error) == SEED_KEYS["error"]
            assert error["content"]
        await ws.send('{"type": "text", "content": "still there?"}')
        assert (await recv(ws))["type"] == "text"


async def test_an_invalid_kb_id_is_reported_and_the_session_goes_on(
    mock_engine: RunningServer,
) -> None:
    async with websockets.connect(f"{mock_engine.ws}/ws/s3?kb_id=../etc") as ws:
        assert "Invalid kb_id" in (await recv(ws))["content"]
        await ws.send('{"type": "text", "content": "hello"}')
        assert (await recv(ws))["type"] == "text"


async def test_wrong_engine_key_closes_with_4401() -> None:
    with serve(engine(api_key="secret")) as running:
        async with websockets.connect(
            f"{running.ws}/ws/s4", additional_headers={"X-Engine-Key": "nope"}
        ) as ws:
            assert (await recv(ws))["content"] == "Invalid engine key"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd.code == 4401
        async with httpx.AsyncClient(base_url=running.http) as http:
            assert (await http.delete("/sessions/s4")).status_code == 401
            headers = {"X-Engine-Key": "secret"}
            assert (await http.delete("/sessions/s4", headers=headers)).status_code == 204


class BrokenTTS(MockTTS):
    name = "broken-tts"

    async def load(self) -> None:
        raise FileNotFoundError("voice.onnx not found")


async def test_a_model_that_fails_to_load_shows_in_readyz_and_refuses_sessions() -> None:
    backends = Backends(llm=MockLLM(0), asr=MockASR(), tts=BrokenTTS())
    with serve(engine(backends), ready=False) as running:
        async with httpx.AsyncClient(base_url=running.http) as http:
            for _ in range(400):  # the failing load runs in the background
                response = await http.get("/readyz")
                if response.json()["error"]:
                    break
                await asyncio.sleep(0.05)
        assert response.status_code == 503
        body = response.json()
        assert body["ready"] is False
        assert "broken-tts: FileNotFoundError: voice.onnx not found" in body["error"]
        assert body["backends"] == {"mock-llm": True, "mock-asr": True, "broken-tts": False}
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"{running.ws}/ws/s5")
        assert refused.value.response.status_code == 503
        assert "voice.onnx not found" in refused.value.response.body.decode()


def test_metrics_export_stage_timings(mock_engine: RunningServer) -> None:
    text = httpx.get(f"{mock_engine.http}/metrics").text
    assert 'tutor_engine_ready{tutor_id="0"} 1.0' in text
    assert "tutor_engine_stage_seconds" in text
    assert "tutor_engine_first_audio_seconds" in text
