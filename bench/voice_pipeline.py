"""Voice pipeline benchmark on this machine's CPU: real Piper and faster-whisper, mock LLM.

Per stage: ASR and TTS real-time factors (processing time / audio duration). End to end,
through a real engine process over a WebSocket on 127.0.0.1: from sending the user's audio
(the end of their speech) to the first byte of reply audio, for a plain client (one
whole-reply ``audio`` message) and a streaming client (the first per-sentence ``audio_chunk``),
with an instant mock LLM and one that takes ``--token-ms`` per word.

Through the gateway (``python -m tutor_gateway`` with ``make run``'s engine settings): end of
the uploaded question (``bench.questions``, short ~2.2 s and long ~4.8 s) → first reply audio,
for streaming and plain clients, with WAV and (opted in with ``options``) raw PCM16 reply
audio; p50 over ``--repeats`` turns, goal: streaming ≤ 450 ms (short) and ≤ 600 ms (long).
Writes bench/results/voice_pipeline.json.

    python -m bench.voice_pipeline [--repeats 5] [--gateway-only] [--formats wav,pcm16]
        [--before /tmp/before/gateway:/tmp/before/engine-image:...]  # old code, turn by turn
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
import wave
from collections.abc import Iterator
from typing import Any

import httpx
from tutor_engine.backends.faster_whisper_asr import FasterWhisperASR
from tutor_engine.backends.piper_tts import PiperTTS
from tutor_engine.config import EngineSettings
from websockets.asyncio.client import connect

from . import questions
from .common import free_port, process, write_result

SPEECH: dict[str, dict[str, Any]] = {
    "asr": dict(asr_model="", asr_device="cpu", asr_compute_type="int8", asr_cpu_threads=2),
    "tts": dict(tts_model="", tts_device="cpu"),
}
TEXTS = {
    "short": "What is a prime number?",
    "medium": "I have a question about plants. How does photosynthesis work? "
    "And why are most leaves green rather than blue?",
    "long": "Yesterday our teacher explained the water cycle. Water evaporates from the sea, "
    "rises as vapour, cools into clouds and falls again as rain or snow. Rivers carry it "
    "back to the sea, and the cycle starts over. I understood most of it, but I am not "
    "sure why clouds do not fall down, since water is heavier than air. Can you explain?",
}
QUESTION = TEXTS["medium"]


def duration(wav: bytes) -> float:
    with wave.open(io.BytesIO(wav)) as w:
        return w.getnframes() / w.getframerate()


def summary(values: list[float], digits: int = 3) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


async def stages(repeats: int) -> tuple[dict[str, Any], bytes]:
    """Load times and real-time factors of each model; returns the spoken question too."""
    settings = EngineSettings(_env_file=None, **SPEECH["asr"], **SPEECH["tts"])
    tts, asr = PiperTTS(settings), FasterWhisperASR(settings)
    loads = {}
    for name, backend in (("tts", tts), ("asr", asr)):
        started = time.perf_counter()
        await backend.load()
        loads[name] = round(time.perf_counter() - started, 3)
    result: dict[str, Any] = {"load_and_warm_seconds": loads, "tts": {}, "asr": {}}
    spoken = {}
    for name, text in TEXTS.items():
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            spoken[name] = await tts.synthesize(text)
            times.append(time.perf_counter() - started)
        seconds = duration(spoken[name])
        result["tts"][name] = {
            "audio_seconds": round(seconds, 2),
            "synth_seconds": summary(times),
            "rtf": summary([t / seconds for t in times], 4),
        }
    for beam in (1, 5):
        asr.settings = settings.model_copy(update={"asr_beam_size": beam})
        for name, wav in spoken.items():
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                heard = await asr.transcribe(wav)
                times.append(time.perf_counter() - started)
            seconds = duration(wav)
            result["asr"][f"{name}_beam{beam}"] = {
                "audio_seconds": round(seconds, 2),
                "transcribe_seconds": summary(times),
                "rtf": summary([t / seconds for t in times], 4),
                "heard": heard,
            }
    return result, spoken["medium"]


async def one_turn(url: str, frame: str, stream: bool) -> dict[str, float]:
    """Seconds from sending the audio to: transcription, first reply audio, reply complete."""
    marks: dict[str, float] = {}
    async with connect(url + ("?stream=1" if stream else ""), max_size=None) as ws:
        started = time.perf_counter()
        await ws.send(frame)
        while True:
            message = json.loads(await ws.recv())
            at = time.perf_counter() - started
            kind = message["type"]
            if kind == "error":
                raise RuntimeError(message["content"])
            if kind == "transcription":
                marks["transcription"] = at
            elif kind in ("audio", "audio_chunk") and "first_audio" not in marks:
                marks["first_audio"] = at
            if (kind == "audio") or (kind == "text" and message.get("final")):
                marks["complete"] = at
                return marks


async def end_to_end(question: bytes, repeats: int, token_ms: float) -> dict[str, Any]:
    """Both client kinds against an engine process whose mock LLM takes ``token_ms``/word."""
    port = free_port()
    env = {
        "ENGINE_ASR_BACKEND": "faster-whisper",
        "ENGINE_TTS_BACKEND": "piper",
        "ENGINE_LLM_MOCK_TOKEN_SECONDS": str(token_ms / 1000),
        "ENGINE_LOG_LEVEL": "warning",
        **{f"ENGINE_{k.upper()}": str(v) for part in SPEECH.values() for k, v in part.items()},
    }
    frame = json.dumps({"type": "audio", "data": base64.b64encode(question).decode()})
    args = [sys.executable, "-m", "tutor_engine", "--host", "127.0.0.1", "--port", str(port)]
    runs: dict[str, list[dict[str, float]]] = {"whole_reply": [], "sentence_stream": []}
    with process(args, env, f"http://127.0.0.1:{port}/readyz"):
        for i in range(repeats + 1):  # the first round warms caches and is dropped
            for mode, stream in (("whole_reply", False), ("sentence_stream", True)):
                marks = await one_turn(f"ws://127.0.0.1:{port}/ws/bench-{mode}-{i}", frame, stream)
                if i:
                    runs[mode].append(marks)
    return {
        mode: {key: summary([m[key] for m in marks]) for key in marks[0]}
        for mode, marks in runs.items()
    }


# make run's engine settings (Makefile RUN_ENV), mock LLM.
RUN_ENV = {"ENGINE_ASR_BACKEND": "auto", "ENGINE_TTS_BACKEND": "auto", "ENGINE_ASR_BEAM_SIZE": "1"}
GOALS_MS = {"short": 450, "long": 600}  # streaming, end of upload → first audio, p50
PCM16_RATE = 24_000  # what a Web Audio player would ask for


async def first_audio(ws: Any, frame: str) -> float:
    """Seconds from the end of sending ``frame`` to the first reply audio; reads to the end."""
    await ws.send(frame)
    started = time.perf_counter()
    first = 0.0
    while True:
        message = json.loads(await ws.recv())
        kind = message["type"]
        if kind == "error":
            raise RuntimeError(message["content"])
        if kind in ("audio", "audio_chunk") and not first:
            first = time.perf_counter() - started
        if kind == "audio" or (kind == "text" and message.get("final")):
            return first


@contextlib.contextmanager
def gateway(state: str, pythonpath: str | None) -> Iterator[str]:
    """``python -m tutor_gateway`` with make run's engine settings; yields its base URL."""
    port = free_port()
    env = {
        **RUN_ENV,
        "MANAGEMENT_API_HOST": "127.0.0.1",
        "MANAGEMENT_API_PORT": str(port),
        "WEBSOCKET_URL": f"ws://127.0.0.1:{port}/ws",
        "STATE_DIR": state,
        "MAX_MESSAGES_PER_SECOND": "1000",  # the bench's pace, not the message-rate limit
        "LOG_LEVEL": "warning",
        "ENGINE_LOG_LEVEL": "warning",
        **({"PYTHONPATH": pythonpath} if pythonpath else {}),
    }
    base = f"http://127.0.0.1:{port}"
    with process([sys.executable, "-m", "tutor_gateway"], env, f"{base}/health"):
        yield base


def p50(times: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(times) * 1000, 1),
        "min": round(min(times) * 1000, 1),
        "max": round(max(times) * 1000, 1),
    }


async def gateway_first_audio(
    repeats: int, formats: list[str], before: str | None
) -> dict[str, Any]:
    """End of upload → first reply audio through the gateway with make run's defaults.

    With ``before`` (a PYTHONPATH holding an older tree), a second gateway runs that code and
    the two are asked in turn, turn by turn, so both see the same machine load (WAV only:
    an older tree may not know pcm16).
    """
    result: dict[str, Any] = {"goals_p50_ms": GOALS_MS, "pcm16_sample_rate": PCM16_RATE}
    trees = {"after": None, **({"before": before} if before else {})}
    with contextlib.ExitStack() as stack:
        bases = {
            tree: stack.enter_context(
                gateway(stack.enter_context(tempfile.TemporaryDirectory()), path)
            )
            for tree, path in trees.items()
        }
        async with httpx.AsyncClient(timeout=120) as http:
            student = 0
            for name in questions.QUESTIONS:
                audio = base64.b64encode(questions.spoken(name)).decode()
                frame = json.dumps({"type": "audio", "data": audio})
                figures: dict[str, Any] = {
                    "audio_seconds": round(questions.seconds(questions.spoken(name)), 2)
                }
                for fmt in formats:
                    for mode, stream in (("streaming", True), ("plain", False)):
                        options: dict[str, Any] = {"type": "options", "stream": stream}
                        if fmt == "pcm16":
                            options |= {"audio_format": "pcm16", "sample_rate": PCM16_RATE}
                        asked = [t for t in bases if t == "after" or fmt == "wav"]
                        times: dict[str, list[float]] = {t: [] for t in asked}
                        async with contextlib.AsyncExitStack() as sockets:
                            ws = {}
                            for tree in asked:
                                student += 1  # a session each (MAX_SESSIONS_PER_STUDENT)
                                body = (
                                    await http.post(
                                        f"{bases[tree]}/v1/sessions",
                                        json={"tutor_id": 1, "student_id": student},
                                    )
                                ).json()
                                url = f"{body['engine_url']}?token={body['engine_token']}"
                                ws[tree] = await sockets.enter_async_context(
                                    connect(url, max_size=None, open_timeout=120)
                                )
                                await ws[tree].send(json.dumps(options))
                                assert json.loads(await ws[tree].recv())["type"] == "options"
                            for i in range(repeats + 1):  # the first turn warms up
                                for tree in asked:
                                    took = await first_audio(ws[tree], frame)
                                    if i:
                                        times[tree].append(took)
                                    await asyncio.sleep(0.2)  # the exchange is saved
                        key = f"{mode}_{fmt}_first_audio_ms"
                        figures[key] = p50(times["after"])
                        if "before" in times:
                            figures[f"before_{key}"] = p50(times["before"])
                result[name] = figures
    return result


async def main(repeats: int, token_ms: float) -> dict[str, Any]:
    result, question = await stages(repeats)
    result["end_to_end_seconds"] = {
        "question_audio_seconds": round(duration(question), 2),
        "mock_llm_instant": await end_to_end(question, repeats, 0.0),
        f"mock_llm_{token_ms:g}ms_per_word": await end_to_end(question, repeats, token_ms),
    }
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--token-ms", type=float, default=30.0, help="mock LLM time per word")
    parser.add_argument(
        "--gateway-only", action="store_true", help="only the figures through the gateway"
    )
    parser.add_argument("--formats", default="wav,pcm16", help="reply audio formats to measure")
    parser.add_argument(
        "--before", help="PYTHONPATH of an older tree to measure turn by turn beside this one"
    )
    args = parser.parse_args()
    formats = args.formats.split(",")
    result = {} if args.gateway_only else asyncio.run(main(args.repeats, args.token_ms))
    result["gateway_first_audio"] = asyncio.run(
        gateway_first_audio(args.repeats, formats, args.before)
    )
    result["settings"] = {"repeats": args.repeats, "asr": SPEECH["asr"], "tts": "joe (Piper)"}
    path = write_result("voice_pipeline", result)
    print(path.read_text())
