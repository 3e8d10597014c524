"""Streamed audio input (audio_start, PCM16 chunks, audio_commit / VAD, barge-in): the pure
state machine and endpointing, the protocol, and a real engine (mock and real models)."""

from __future__ import annotations

import base64
import json
import wave
from collections.abc import Iterator
from io import BytesIO

import numpy as np
import pytest
import websockets
from tutor_engine.audio_stream import AudioStream, SpeechEvent, TooLong, Utterance
from tutor_engine.protocol import (
    AudioAppendIn,
    AudioCommitIn,
    AudioStartIn,
    ProtocolError,
    parse_client_frame,
)
from tutor_engine.vad import Endpointer, VadConfig

from tests.servers import RunningServer

from .conftest import engine, recv, recv_until, serve
from .speech import real_speech_settings, words

RATE = 16_000


def tone(seconds: float, amplitude: int = 8000) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return bytes(2 * int(seconds * RATE))


def loud(frame: np.ndarray) -> float:
    """A stand-in for Silero: speech wherever the frame is loud."""
    return 1.0 if float(np.abs(frame).mean()) > 0.05 else 0.0


def chunks(pcm: bytes, ms: int) -> Iterator[bytes]:
    step = RATE * 2 * ms // 1000
    for i in range(0, len(pcm), step):
        yield pcm[i : i + step]


# -- endpointing and the stream's state machine (pure) -----------------------------------------


def test_endpointer_needs_enough_speech_to_start_and_enough_silence_to_stop() -> None:
    e = Endpointer(VadConfig(threshold=0.5, min_speech_ms=96, silence_ms=160))  # 3 and 5 frames
    fed = [e.feed(p) for p in [0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.2, 0.2, 0.9, *[0.1] * 5, 0.1]]
    assert fed.index("start") == 4  # the blip at frame 1 was too short
    assert e.start_frame == 2
    assert fed.index("stop") == 13  # the silence run restarted at the 0.9 of frame 8
    assert e.last_speech_frame == 9
    assert fed.count("start") == fed.count("stop") == 1


def test_vad_stream_yields_the_utterance_with_padding_and_events() -> None:
    stream = AudioStream(10, VadConfig(0.5, 96, 320), loud)
    events = []
    for chunk in chunks(silence(1.0) + tone(1.0) + silence(1.0), 20):
        events.extend(stream.append(chunk))
    kinds = [e.kind if isinstance(e, SpeechEvent) else type(e).__name__ for e in events]
    assert kinds == ["speech_started", "speech_stopped", "Utterance"]
    started, stopped, utterance = events
    assert isinstance(utterance, Utterance)
    assert abs(started.audio_ms - 1000) < 40 and abs(stopped.audio_ms - 2000) < 40
    assert 1.5 <= utterance.seconds <= 1.7  # the speech, plus 300 ms either side
    assert stream.commit() is None  # nothing said since


@pytest.mark.parametrize("silence_ms", [96, 320])  # padding longer and shorter than the silence
def test_vad_stream_segments_one_utterance_after_another(silence_ms: int) -> None:
    stream = AudioStream(10, VadConfig(0.5, 96, silence_ms), loud)
    events = []
    for chunk in chunks((silence(0.5) + tone(0.5)) * 3 + silence(0.5), 20):
        events.extend(stream.append(chunk))
    utterances = [e for e in events if isinstance(e, Utterance)]
    assert len(utterances) == 3
    assert all(0.5 <= u.seconds <= 1.2 for u in utterances)


def test_vad_stream_drops_an_overlong_utterance_until_its_speech_ends() -> None:
    stream = AudioStream(1.0, VadConfig(0.5, 96, 160), loud)
    events = []
    for chunk in chunks(tone(2.0) + silence(0.5) + tone(0.5) + silence(0.5), 20):
        events.extend(stream.append(chunk))
    kinds = [e.kind if isinstance(e, SpeechEvent) else type(e).__name__ for e in events]
    assert kinds == [
        "speech_started",
        "TooLong",
        "speech_stopped",
        "speech_started",
        "speech_stopped",
        "Utterance",
    ]


def test_manual_stream_commits_exactly_what_was_sent_and_bounds_it() -> None:
    stream = AudioStream(1.0)
    pcm = tone(0.5)
    for chunk in chunks(pcm, 30):
        assert stream.append(chunk) == []
    utterance = stream.commit()
    assert utterance is not None and utterance.seconds == 0.5
    expected = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    assert np.array_equal(utterance.samples, expected)
    assert stream.commit() is None
    stream.append(tone(0.2))
    stream.cancel()
    assert stream.commit() is None
    assert stream.append(tone(0.6)) == [] and stream.append(tone(0.6)) == [TooLong(1.0)]
    assert stream.append(tone(0.2)) == []  # the rest of it is dropped too
    assert stream.commit() is None  # the too-long utterance was dropped
    stream.append(tone(0.2))
    assert stream.commit() is not None


def parse(payload: dict[str, object]) -> object:
    return parse_client_frame(json.dumps(payload), max_bytes=1 << 20, max_text_chars=100)


def test_audio_stream_messages_parse_and_bad_ones_name_the_rule() -> None:
    assert parse({"type": "audio_start"}) == AudioStartIn(True, None, True)
    assert parse({"type": "audio_start", "vad": False, "silence_ms": 300}) == AudioStartIn(
        False, 300, True
    )
    assert parse({"type": "audio_commit"}) == AudioCommitIn()
    data = base64.b64encode(b"\x01\x00\x02\x00").decode()
    assert parse({"type": "audio_append", "data": data}) == AudioAppendIn(b"\x01\x00\x02\x00")
    for payload, error in [
        ({"type": "audio_start", "format": "opus"}, "expected 'pcm16'"),
        ({"type": "audio_start", "sample_rate": 48000}, "expected 16000"),
        ({"type": "audio_start", "silence_ms": 50}, "from 100 to 5000"),
        ({"type": "audio_start", "vad": "yes"}, "true or false"),
        ({"type": "audio_append", "data": base64.b64encode(b"abc").decode()}, "even number"),
        ({"type": "audio_append", "data": "!!"}, "not valid base64"),
    ]:
        with pytest.raises(ProtocolError, match=error):
            parse(payload)


# -- a real engine with mock models (real sockets) ----------------------------------------------


@pytest.fixture
def engine_1s() -> Iterator[RunningServer]:
    with serve(engine(max_audio_seconds=1.0)) as running:
        yield running


async def test_chunks_without_audio_start_get_one_error_then_the_stream_works(
    engine_1s: RunningServer,
) -> None:
    async with websockets.connect(f"{engine_1s.ws}/ws/a1") as ws:
        for chunk in chunks(tone(0.1), 20):
            await ws.send(chunk)
        await ws.send('{"type": "audio_commit"}')
        first = await recv(ws)
        assert first["type"] == "error" and "Binary frames" in first["content"]
        await ws.send('{"type": "audio_start", "vad": false}')
        ack = await recv(ws)  # the rest of that run got no error
        assert (ack["type"], ack["vad"], ack["format"], ack["sample_rate"]) == (
            "audio_start",
            False,
            "pcm16",
            16000,
        )
        for chunk in chunks(tone(0.5), 40):
            await ws.send(chunk)
        await ws.send('{"type": "audio_commit"}')
        heard, answer, speech = await recv(ws), await recv(ws), await recv(ws)
        assert heard == {**heard, "type": "transcription", "content": "(speech, 0.50 seconds)"}
        assert answer["type"] == "text" and "(speech, 0.50 seconds)" in answer["content"]
        assert speech["type"] == "audio"
        # Too long, an odd chunk, nothing to commit: each an error, the stream stays usable.
        for chunk in chunks(tone(1.2), 100):
            await ws.send(chunk)
        assert "Audio too long" in (await recv(ws))["content"]
        await ws.send('{"type": "audio_commit"}')  # ends the dropped utterance: no turn, no error
        await ws.send(b"\x00\x01\x02")
        assert "even number of bytes" in (await recv(ws))["content"]
        await ws.send('{"type": "audio_commit"}')
        assert "Nothing to commit" in (await recv(ws))["content"]
        await ws.send(tone(0.25))
        await ws.send('{"type": "audio_commit"}')
        assert (await recv(ws))["content"] == "(speech, 0.25 seconds)"


async def test_a_commit_without_a_stream_says_to_send_audio_start(
    mock_engine: RunningServer,
) -> None:
    async with websockets.connect(f"{mock_engine.ws}/ws/a3") as ws:
        await ws.send('{"type": "audio_commit"}')
        assert "No audio stream is open" in (await recv(ws))["content"]
        await ws.send('{"type": "audio_start", "format": "wav"}')
        assert "expected 'pcm16'" in (await recv(ws))["content"]


async def test_relay_receipts_settle_chunks_at_once_and_the_commit_with_its_turn() -> None:
    from tutor_contract.relay import RELAY_HEADER, parse_receipt

    with serve(engine()) as running:
        async with websockets.connect(
            f"{running.ws}/ws/a2", additional_headers={RELAY_HEADER: "1"}
        ) as ws:
            await ws.send('{"type": "audio_start", "vad": false}')  # frame 1
            await ws.send(tone(0.1))  # 2
            await ws.send(tone(0.1))  # 3
            await ws.send('{"type": "audio_commit"}')  # 4
            got = await recv_until(ws, "audio")
    receipts = [parse_receipt(json.dumps(m, separators=(",", ":"))) for m in got]
    order = [(r.seq, r.started) for r in receipts if r is not None]
    assert order[:4] == [(1, False), (2, False), (3, False), (4, True)]
    assert [m["type"] for m in got if m["type"] != "tutor.relay"] == [
        "audio_start",
        "transcription",
        "text",
        "audio",
    ]


# -- the real VAD and tiny.en ---------------------------------------------------------------------


def question_pcm(name: str) -> bytes:
    from bench.questions import spoken

    with wave.open(BytesIO(spoken(name))) as wav:
        assert wav.getframerate() == RATE
        return wav.readframes(wav.getnframes())


@pytest.fixture(scope="module")
def voice_engine() -> Iterator[RunningServer]:
    settings = real_speech_settings(tutor_id=4, llm_mock_token_seconds=0.15)
    with serve(engine(**settings)) as running:
        yield running


@pytest.mark.slow
async def test_vad_ends_a_spoken_question_and_speech_barges_in_on_the_reply(
    voice_engine: RunningServer,
) -> None:
    question = question_pcm("short")
    async with websockets.connect(f"{voice_engine.ws}/ws/v1", max_size=None) as ws:
        await ws.send('{"type": "options", "stream": true}')
        await recv(ws)
        await ws.send('{"type": "audio_start", "silence_ms": 500}')
        assert (await recv(ws))["silence_ms"] == 500
        for chunk in chunks(silence(0.3) + question + silence(1.0), 40):
            await ws.send(chunk)
        got = await recv_until(ws, "transcription")
        kinds = [m["type"] for m in got]
        assert kinds == ["speech_started", "speech_stopped", "transcription"]
        assert 200 <= got[0]["audio_ms"] <= 600
        assert {"prime", "number"} <= words(got[-1]["content"])
        await recv_until(ws, "audio_chunk")  # the reply is being spoken (slow mock LLM)
        for chunk in chunks(question + silence(1.0), 40):  # the user speaks again
            await ws.send(chunk)
        got = await recv_until(ws, "interrupted")
        assert "speech_started" in [m["type"] for m in got]
        assert got[-1]["reply_id"] == 1
        got = await recv_until(ws, "transcription")
        assert got[-1]["reply_id"] == 2 and "speech_stopped" in [m["type"] for m in got]
        final = (await recv_until(ws, "text"))[-1]
        assert final["final"] is True and final["audio_chunks"] >= 1


@pytest.mark.slow
async def test_seconds_of_audio_in_one_frame_go_through_the_vad_alike(
    voice_engine: RunningServer,
) -> None:
    # Over LARGE_AUDIO_CHUNK_BYTES: the VAD runs in a thread, with the same events and text.
    async with websockets.connect(f"{voice_engine.ws}/ws/v1", max_size=None) as ws:
        await ws.send('{"type": "audio_start", "silence_ms": 500}')
        await recv(ws)
        await ws.send(silence(0.3) + question_pcm("short") + silence(1.0))
        got = await recv_until(ws, "transcription")
        assert [m["type"] for m in got] == ["speech_started", "speech_stopped", "transcription"]
        assert {"prime", "number"} <= words(got[-1]["content"])
