"""Streaming audio input benchmark: end of speech (in the audio) → first reply audio.

Through the gateway (``python -m tutor_gateway`` with ``make run``'s engine settings, mock LLM),
a streaming client (``options`` ``stream: true``) speaks each question of ``bench.questions``
(short ~2.2 s, long ~4.8 s) as a microphone would: ``audio_start``, then PCM16 binary frames of
``--chunk-ms`` paced in real time, after 300 ms of silence. Variants, each its own session:

- ``vad``: server-side VAD ends the turn (silence keeps coming, as from an open mic), with the
  default silence (ENGINE_VAD_SILENCE_MS) and with ``silence_ms`` 300;
- ``commit``: the client sends ``audio_commit`` right after the last chunk of the recording;
- ``upload``: the reference, today's protocol: the whole WAV in one ``audio`` message at the
  end of the recording.

Each figure is measured from the end of speech in the audio (its last voiced sample,
``questions.speech_end``: espeak-ng's recordings end with ~0.4 s of silence, which the commit
and upload variants wait out as a user letting go of a button would, and in which the VAD
already counts its silence) to the first ``audio_chunk``; p50/min/max over ``--repeats`` turns
(a warm-up turn first). Writes bench/results/streaming_input.json.

    python -m bench.streaming_input [--repeats 3] [--chunk-ms 40]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import sys
import tempfile
import time
import wave
from typing import Any

import httpx
from websockets.asyncio.client import connect

from . import questions
from .common import free_port, process, write_result

RUN_ENV = {"ENGINE_ASR_BACKEND": "auto", "ENGINE_TTS_BACKEND": "auto", "ENGINE_ASR_BEAM_SIZE": "1"}
RATE = 16_000
LEAD_SILENCE = 0.3


def pcm_of(wav: bytes) -> bytes:
    with wave.open(io.BytesIO(wav)) as w:
        return w.readframes(w.getnframes())


async def reply_audio(ws: Any, since: list[float]) -> float:
    """Seconds from ``since[0]`` (set by the sender) to the first audio_chunk; reads to the
    final text."""
    first = 0.0
    while True:
        message = json.loads(await ws.recv())
        kind = message["type"]
        if kind == "error":
            raise RuntimeError(message["content"])
        if kind == "audio_chunk" and not first:
            first = time.perf_counter() - since[0]
        if kind == "text" and message.get("final"):
            return first


async def speak(ws: Any, wav: bytes, chunk_ms: int, commit: bool, since: list[float]) -> None:
    """Send silence, the question, and (without commit) silence, paced in real time; mark the
    end of its speech (the question's own trailing silence is not speech)."""
    pcm = pcm_of(wav)
    step = RATE * 2 * chunk_ms // 1000
    lead = bytes(int(LEAD_SILENCE * RATE) * 2)
    tail = b"" if commit else bytes(RATE * 2 * 2)  # 2 s of open mic after the question
    audio = lead + pcm + tail
    speech_end = len(lead) + 2 * int(questions.speech_end(wav) * RATE)
    started = time.perf_counter()
    sent = 0
    while sent < len(audio):
        chunk = audio[sent : sent + step]
        due = started + (sent + len(chunk)) / (RATE * 2)  # a mic delivers a chunk once recorded
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        await ws.send(chunk)
        if sent < speech_end <= sent + len(chunk):
            since[0] = time.perf_counter()
        sent += len(chunk)
    if commit:  # the user lets go at the end of the recording
        await ws.send('{"type": "audio_commit"}')


async def turn(ws: Any, name: str, variant: str, chunk_ms: int) -> float:
    wav = questions.spoken(name)
    since = [0.0]
    if variant == "upload":
        await asyncio.sleep(LEAD_SILENCE + questions.seconds(wav))  # the user speaks meanwhile
        await ws.send(json.dumps({"type": "audio", "data": base64.b64encode(wav).decode()}))
        # Sent at the end of the recording: its speech ended that much earlier.
        since[0] = time.perf_counter() - (questions.seconds(wav) - questions.speech_end(wav))
        return await reply_audio(ws, since)
    sender = asyncio.create_task(speak(ws, wav, chunk_ms, variant == "commit", since))
    took = await reply_audio(ws, since)
    await sender
    return took


VARIANTS: dict[str, dict[str, Any] | None] = {
    "vad_default_silence": {"type": "audio_start"},
    "vad_silence_300ms": {"type": "audio_start", "silence_ms": 300},
    "commit": {"type": "audio_start", "vad": False},
    "upload": None,
}


async def main(repeats: int, chunk_ms: int) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {"chunk_ms": chunk_ms, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="bench-stream-in-") as state:
        env = {
            **RUN_ENV,
            "MANAGEMENT_API_HOST": "127.0.0.1",
            "MANAGEMENT_API_PORT": str(port),
            "WEBSOCKET_URL": f"ws://127.0.0.1:{port}/ws",
            "STATE_DIR": state,
            "LOG_LEVEL": "warning",
            "ENGINE_LOG_LEVEL": "warning",
        }
        with process([sys.executable, "-m", "tutor_gateway"], env, f"{base}/health"):
            async with httpx.AsyncClient(timeout=120) as http:
                student = 0
                for name in questions.QUESTIONS:
                    figures: dict[str, Any] = {
                        "audio_seconds": round(questions.seconds(questions.spoken(name)), 2)
                    }
                    for variant, start in VARIANTS.items():
                        student += 1
                        body = (
                            await http.post(
                                f"{base}/v1/sessions", json={"tutor_id": 1, "student_id": student}
                            )
                        ).json()
                        url = f"{body['engine_url']}?token={body['engine_token']}"
                        times = []
                        async with connect(url, max_size=None, open_timeout=120) as ws:
                            await ws.send('{"type": "options", "stream": true}')
                            assert json.loads(await ws.recv())["type"] == "options"
                            if start is not None:
                                await ws.send(json.dumps(start))
                                ack = json.loads(await ws.recv())
                                assert ack["type"] == "audio_start", ack
                                figures.setdefault("silence_ms", {})[variant] = ack["silence_ms"]
                            for i in range(repeats + 1):
                                took = await turn(ws, name, variant, chunk_ms)
                                if i:
                                    times.append(took)
                                await asyncio.sleep(0.3)
                        figures[f"{variant}_first_audio_ms"] = {
                            "p50": round(statistics.median(times) * 1000, 1),
                            "min": round(min(times) * 1000, 1),
                            "max": round(max(times) * 1000, 1),
                        }
                    upload = figures["upload_first_audio_ms"]["p50"]
                    figures["ratio_to_upload"] = {
                        v: round(figures[f"{v}_first_audio_ms"]["p50"] / upload, 2)
                        for v in VARIANTS
                        if v != "upload"
                    }
                    result[name] = figures
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-ms", type=int, default=40)
    args = parser.parse_args()
    path = write_result("streaming_input", asyncio.run(main(args.repeats, args.chunk_ms)))
    print(path.read_text())
