"""Opt-in streaming (text deltas, per-sentence audio, final message) and barge-in."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import websockets
from tutor_engine.backends import Backends
from tutor_engine.backends.mock import (
    SAMPLE_RATE,
    SECONDS_PER_CHAR,
    MockASR,
    MockLLM,
    MockTTS,
    make_wav,
    read_wav_comment,
)
from tutor_engine.text import split_sentences

from tests.servers import RunningServer

from .conftest import engine, recv, recv_until, serve


@pytest.fixture
def slow_engine() -> Iterator[RunningServer]:
    """Mock backends whose LLM takes 50 ms per word, so a reply can be interrupted."""
    backends = Backends(llm=MockLLM(7, delay_s=0.05), asr=MockASR(), tts=MockTTS())
    with serve(engine(backends, tutor_id=7)) as running:
        yield running


def audio_frame(text: str) -> str:
    return json.dumps({"type": "audio", "data": base64.b64encode(make_wav(text)).decode()})


async def test_opting_in_by_first_message_streams_deltas_chunks_and_a_final(
    mock_engine: RunningServer,
) -> None:
    async with websockets.connect(f"{mock_engine.ws}/ws/st1") as ws:
        await ws.send('{"type": "options", "stream": true}')
        assert (await recv(ws))["stream"] is True
        await ws.send(audio_frame("Explain recursion to me please."))
        events = await recv_until(ws, "text")
    heard = events[0]
    assert (heard["type"], heard["content"], heard["reply_id"]) == (
        "transcription",
        "Explain recursion to me please.",
        1,
    )
    final = events[-1]
    assert final["final"] is True and final["reply_id"] == 1
    deltas = [e["content"] for e in events if e["type"] == "text_delta"]
    assert len(deltas) > 5
    assert "".join(deltas).strip() == final["content"]
    chunks = [e for e in events if e["type"] == "audio_chunk"]
    assert [c["index"] for c in chunks] == list(range(final["audio_chunks"]))
    # The first chunk is the first clause long enough to say, then whole sentences.
    assert [c["content"] for c in chunks] == split_sentences(
        final["content"], first_clause_chars=12
    )
    assert chunks[0]["content"] == "Tutor 0 heard:"
    for chunk in chunks:  # each chunk is the speech of its own sentence
        assert read_wav_comment(base64.b64decode(chunk["data"])) == chunk["content"]
    assert not [e for e in events if e["type"] == "audio"]


async def test_opting_in_by_query_parameter_and_text_gets_no_audio(
    mock_engine: RunningServer,
) -> None:
    async with websockets.connect(f"{mock_engine.ws}/ws/st2?stream=1") as ws:
        await ws.send('{"type": "text", "content": "hi"}')
        events = await recv_until(ws, "text")
    assert {e["type"] for e in events} == {"text_delta", "text"}
    assert events[-1]["final"] is True


async def test_opting_out_again_restores_the_seed_messages(mock_engine: RunningServer) -> None:
    async with websockets.connect(f"{mock_engine.ws}/ws/st3?stream=true") as ws:
        await ws.send('{"type": "options", "stream": false}')
        assert (await recv(ws))["stream"] is False
        await ws.send('{"type": "text", "content": "hi"}')
        assert set(await recv(ws)) == {"type", "content", "role", "timestamp"}


async def test_a_new_message_interrupts_the_reply_in_flight(slow_engine: RunningServer) -> None:
    async with websockets.connect(f"{slow_engine.ws}/ws/barge?stream=1") as ws:
        await ws.send('{"type": "text", "content": "Tell me a long story"}')
        first = await recv(ws)
        assert first["type"] == "text_delta" and first["reply_id"] == 1
        await ws.send('{"type": "text", "content": "Stop, a question"}')
        events = await recv_until(ws, "interrupted")
        interrupted = events[-1]
        assert interrupted["reply_id"] == 1
        sent = (first["content"] + "".join(e["content"] for e in events[:-1])).strip()
        full = "Tutor 7 heard: Tell me a long story. This is turn 1, with 0 earlier messages"
        assert interrupted["content"].startswith(sent)  # at most one word was still in flight
        assert full.startswith(interrupted["content"]) and len(interrupted["content"]) < len(full)
        after = await recv_until(ws, "text")
    assert {e["reply_id"] for e in after} == {2}
    # The cut reply stays in the history as far as it got: user, partial answer, user.
    assert "This is turn 2, with 2 earlier messages" in after[-1]["content"]


async def test_a_plain_client_is_never_interrupted(slow_engine: RunningServer) -> None:
    async with websockets.connect(f"{slow_engine.ws}/ws/plain") as ws:
        await ws.send('{"type": "text", "content": "one"}')
        await ws.send('{"type": "text", "content": "two"}')
        first, second = await recv(ws), await recv(ws)
    assert first["content"].startswith("Tutor 7 heard: one.")
    assert second["content"].startswith("Tutor 7 heard: two.")


def pcm16_samples(message: dict) -> int:
    """The samples of a raw PCM16 ``audio``/``audio_chunk`` message."""
    assert (message["format"], message["sample_rate"]) == ("pcm16", 8000)
    data = base64.b64decode(message["data"])
    assert len(data) % 2 == 0 and not data.startswith(b"RIFF")
    return len(data) // 2


def mock_samples(text: str, rate: int) -> int:
    """How many samples MockTTS's speech of ``text`` has once resampled to ``rate``."""
    return int(len(text) * SECONDS_PER_CHAR * SAMPLE_RATE) * rate // SAMPLE_RATE


async def test_streamed_audio_chunks_can_be_raw_pcm16_at_a_chosen_rate(
    mock_engine: RunningServer,
) -> None:
    async with websockets.connect(f"{mock_engine.ws}/ws/pcm1") as ws:
        await ws.send('{"type": "options", "stream": true, "audio_format": "pcm16"}')
        options = await recv(ws)
        assert (options["stream"], options["audio_format"], options["sample_rate"]) == (
            True,
            "pcm16",
            16000,
        )
        await ws.send('{"type": "options", "sample_rate": 8000}')  # streaming stays on
        options = await recv(ws)
        assert (options["stream"], options["audio_format"], options["sample_rate"]) == (
            True,
            "pcm16",
            8000,
        )
        await ws.send(audio_frame("Explain recursion to me please."))
        chunks = [e for e in await recv_until(ws, "text") if e["type"] == "audio_chunk"]
    assert chunks
    for chunk in chunks:  # the mock's 16 kHz speech, resampled to 8 kHz
        assert abs(pcm16_samples(chunk) - mock_samples(chunk["content"], 8000)) <= 32


async def test_plain_clients_get_pcm16_too_and_wav_again_when_they_ask(
    mock_engine: RunningServer,
) -> None:
    async with websockets.connect(f"{mock_engine.ws}/ws/pcm2") as ws:
        await ws.send('{"type": "options", "audio_format": "pcm16", "sample_rate": 8000}')
        assert (await recv(ws))["stream"] is False
        await ws.send(audio_frame("What is a prime number?"))
        events = [await recv(ws) for _ in range(3)]
        assert [e["type"] for e in events] == ["transcription", "text", "audio"]
        assert abs(pcm16_samples(events[2]) - mock_samples(events[2]["content"], 8000)) <= 32
        await ws.send('{"type": "options", "audio_format": "wav"}')
        assert (await recv(ws))["audio_format"] == "wav"
        await ws.send(audio_frame("And now?"))
        audio = [await recv(ws) for _ in range(3)][2]
    assert set(audio) == {"type", "content", "data", "role", "timestamp"}  # the seed's
    assert read_wav_comment(base64.b64decode(audio["data"])) == audio["content"]


async def test_bad_audio_options_get_an_error_naming_the_allowed_values(
    mock_engine: RunningServer,
) -> None:
    async with websockets.connect(f"{mock_engine.ws}/ws/pcm3?stream=1") as ws:
        await ws.send('{"type": "options", "audio_format": "pcm16", "sample_rate": 44000}')
        error = await recv(ws)
        await ws.send('{"type": "text", "content": "hi"}')
        assert (await recv(ws))["type"] == "text_delta"  # still streaming
    assert error["type"] == "error"
    assert "8000, 16000, 22050, 24000, 44100, 48000" in error["content"]


async def test_reply_audio_and_reply_ids_can_be_set_by_the_connections_query(
    mock_engine: RunningServer,
) -> None:
    """What the gateway opens the next engine connection with (``resume_params``)."""
    query = "stream=1&audio_format=pcm16&sample_rate=8000&reply_base=41"
    async with websockets.connect(f"{mock_engine.ws}/ws/pcm4?{query}") as ws:
        await ws.send(audio_frame("Explain recursion to me please."))
        events = await recv_until(ws, "text")
    chunks = [e for e in events if e["type"] == "audio_chunk"]
    assert chunks and {e["reply_id"] for e in events if "reply_id" in e} == {42}
    for chunk in chunks:
        assert abs(pcm16_samples(chunk) - mock_samples(chunk["content"], 8000)) <= 32


async def test_bad_audio_in_the_query_gets_an_error_and_wav_audio(
    mock_engine: RunningServer,
) -> None:
    async with websockets.connect(f"{mock_engine.ws}/ws/pcm5?audio_format=ogg") as ws:
        error = await recv(ws)
        await ws.send(audio_frame("What is a prime number?"))
        audio = [await recv(ws) for _ in range(3)][2]
    assert error["type"] == "error" and "'audio_format'" in error["content"]
    assert "replying with WAV audio" in error["content"]
    assert read_wav_comment(base64.b64decode(audio["data"])) == audio["content"]


async def test_a_continued_connection_is_not_told_again_about_its_query(
    mock_engine: RunningServer,
) -> None:
    """The gateway's next connection of a session (``reply_base``) repeats the client's query."""
    url = f"{mock_engine.ws}/ws/pcm6?audio_format=ogg&reply_base=3"
    async with websockets.connect(url) as ws:
        await ws.send('{"type": "text", "content": "hi"}')
        reply = await recv(ws)
    assert reply["type"] == "text" and "heard: hi." in reply["content"]
