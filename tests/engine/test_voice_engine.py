"""A whole engine with the real speech models, over a real WebSocket, plain and streaming."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator

import httpx
import pytest
import websockets
from tutor_engine.backends.faster_whisper_asr import FasterWhisperASR
from tutor_engine.backends.piper_tts import PiperTTS
from tutor_engine.config import EngineSettings

from tests.servers import RunningServer

from .conftest import engine, recv, recv_until, serve
from .speech import encode, real_speech_settings, words

pytestmark = pytest.mark.slow

QUESTION = "How many legs does a spider have?"


@pytest.fixture(scope="module")
def voice_engine() -> Iterator[RunningServer]:
    with serve(engine(**real_speech_settings(tutor_id=3))) as running:
        yield running


@pytest.fixture(scope="module")
def question_webm() -> bytes:
    """The question, spoken by Piper and encoded as a browser's MediaRecorder would."""
    tts = PiperTTS(EngineSettings(_env_file=None, **real_speech_settings()))
    asyncio.run(tts.load())
    return encode(asyncio.run(tts.synthesize(QUESTION)), "webm", "libopus")


def frame(audio: bytes) -> str:
    return json.dumps({"type": "audio", "data": base64.b64encode(audio).decode()})


async def hear(wav_b64: str) -> str:
    asr = FasterWhisperASR(EngineSettings(_env_file=None, **real_speech_settings()))
    await asr.load()
    return await asr.transcribe(base64.b64decode(wav_b64))


def test_readyz_lists_the_real_models(voice_engine: RunningServer) -> None:
    body = httpx.get(f"{voice_engine.http}/readyz").json()
    assert body["ready"] is True
    assert body["backends"] == {"mock-llm": True, "faster-whisper": True, "piper": True}


async def test_spoken_question_gets_seed_messages_and_a_spoken_reply(
    voice_engine: RunningServer, question_webm: bytes
) -> None:
    async with websockets.connect(f"{voice_engine.ws}/ws/v1", max_size=None) as ws:
        await ws.send(frame(question_webm))
        heard, answer, speech = await recv(ws), await recv(ws), await recv(ws)
    assert [m["type"] for m in (heard, answer, speech)] == ["transcription", "text", "audio"]
    assert {"legs", "spider"} <= words(heard["content"])
    assert answer["content"].startswith("Tutor 3 heard:")
    assert speech["content"] == answer["content"]
    assert {"legs", "spider", "earlier", "messages"} <= words(await hear(speech["data"]))


async def test_streaming_client_gets_one_spoken_chunk_per_sentence(
    voice_engine: RunningServer, question_webm: bytes
) -> None:
    async with websockets.connect(f"{voice_engine.ws}/ws/v2?stream=1", max_size=None) as ws:
        await ws.send(frame(question_webm))
        events = await recv_until(ws, "text")
    chunks = [e for e in events if e["type"] == "audio_chunk"]
    assert len(chunks) == events[-1]["audio_chunks"] >= 2
    assert {"with", "earlier", "messages"} <= words(await hear(chunks[-1]["data"]))


async def test_silence_and_garbage_get_errors_and_the_session_goes_on(
    voice_engine: RunningServer,
) -> None:
    silence = frame(b"\x00\x00" * 16000).replace('"audio"', '"audio", "format": "pcm16"')
    async with websockets.connect(f"{voice_engine.ws}/ws/v3") as ws:
        await ws.send(silence)
        assert (await recv(ws))["content"] == "No speech was recognised in the audio"
        await ws.send(frame(b"garbage" * 50))
        error = await recv(ws)
        assert error["type"] == "error" and "Could not decode the audio" in error["content"]
        await ws.send('{"type": "text", "content": "hello"}')
        assert (await recv(ws))["type"] == "text"
