"""Concurrent speakers on one tutor: N students send the short spoken question at the same moment.

Through ``python -m tutor_gateway`` (local engines) with ``make run``'s defaults (tiny.en and
Piper through ``auto``, beam 1, mock LLM): N students (1, 4, 8) of one tutor, each on its own
streaming connection, send ``bench.questions.spoken("short")`` as one ``audio`` message when a
barrier releases them all; measured per student from the end of its send to its first
``audio_chunk``. Per N: p50 and worst over all rounds, errors; ratios of the p50s to N=1's.
Writes bench/results/speakers.json.

    python -m bench.speakers [--rounds 3] [--speakers 1,4,8]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import httpx
import psutil
from tutor_contract.cores import available_cores
from websockets.asyncio.client import connect

from .common import cpu_seconds, free_port, process, write_result
from .questions import QUESTIONS, spoken

TUTOR = 1
CONTENT_WORDS = {"prime", "number"}  # of QUESTIONS["short"]
RUN_ENV = {"ENGINE_ASR_BACKEND": "auto", "ENGINE_TTS_BACKEND": "auto", "ENGINE_ASR_BEAM_SIZE": "1"}


async def open_session(http: httpx.AsyncClient, gateway: str, student: int) -> str:
    body = (
        (await http.post(f"{gateway}/v1/sessions", json={"tutor_id": TUTOR, "student_id": student}))
        .raise_for_status()
        .json()
    )
    return f"{body['engine_url']}?token={body['engine_token']}"


async def speaker(
    url: str, frame: str, barrier: asyncio.Barrier, cpu: Callable[[], float] | None = None
) -> tuple[float, str, float | None]:
    """Seconds from the end of sending the question to the first audio chunk of the reply, the
    transcription and, given ``cpu`` (the servers' CPU seconds so far), the CPU seconds the
    servers spent from the send to that first chunk."""
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "options", "stream": True}))
        while json.loads(await ws.recv())["type"] != "options":
            pass
        await barrier.wait()
        cpu_at_send = cpu() if cpu else 0.0
        await ws.send(frame)
        sent = time.perf_counter()
        first, heard, first_cpu = None, "", None
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 120))
            kind = message["type"]
            if kind == "error":
                raise RuntimeError(message["content"])
            if kind == "transcription":
                heard = message["content"]
            if kind == "audio_chunk" and first is None:
                first = time.perf_counter() - sent
                first_cpu = cpu() - cpu_at_send if cpu else None
            if kind == "text" and message.get("final"):
                if first is None:
                    raise RuntimeError("reply without audio")
                return first, heard, first_cpu


async def rounds(
    gateway: str, speakers: int, count: int, frame: str, server: psutil.Process | None = None
) -> dict[str, Any]:
    """``count`` rounds of ``speakers`` at once; with one speaker and ``server``, also the CPU
    the gateway and its engine spend up to the first audio."""
    cpu = (lambda: cpu_seconds(server)) if server is not None and speakers == 1 else None
    firsts: list[float] = []
    first_cpus: list[float] = []
    errors: list[str] = []
    misheard = 0
    async with httpx.AsyncClient(timeout=180) as http:
        for r in range(count):
            urls = [
                await open_session(http, gateway, 1000 * speakers + 100 * r + i)
                for i in range(speakers)
            ]
            barrier = asyncio.Barrier(speakers)
            results = await asyncio.gather(
                *(speaker(url, frame, barrier, cpu) for url in urls), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    errors.append(f"{type(result).__name__}: {result}")
                else:
                    firsts.append(result[0])
                    if result[2] is not None:
                        first_cpus.append(result[2])
                    misheard += not CONTENT_WORDS <= set(re.findall(r"[a-z]+", result[1].lower()))
    return {
        "first_audio_p50_ms": round(statistics.median(firsts) * 1000, 1) if firsts else None,
        "first_audio_worst_ms": round(max(firsts) * 1000, 1) if firsts else None,
        "samples": len(firsts),
        "errors": len(errors),
        "misheard": misheard,  # transcriptions missing a content word of the question
        "error_examples": sorted(set(errors))[:3],
        **(
            {"cpu_ms_to_first_audio": round(statistics.median(first_cpus) * 1000, 1)}
            if first_cpus
            else {}
        ),
    }


async def measure(
    gateway: str, server: psutil.Process, counts: list[int], count: int
) -> dict[str, Any]:
    """Each N's figures, with the CPU its turns cost: ``cpu_ms_per_turn`` (gateway + engine)."""
    frame = json.dumps({"type": "audio", "data": base64.b64encode(spoken("short")).decode()})
    await rounds(gateway, 1, 1, frame)  # starts the tutor's engine, warms it
    result = {}
    for n in counts:
        before = cpu_seconds(server)
        figures = await rounds(gateway, n, count, frame, server)
        turns = figures["samples"] + figures["errors"]
        figures["cpu_ms_per_turn"] = round((cpu_seconds(server) - before) * 1000 / turns, 1)
        result[f"{n}_speakers"] = figures
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--speakers", default="1,4,8", help="comma-separated N")
    parser.add_argument("--device", default="auto", help="ENGINE_ASR_DEVICE/TTS_DEVICE (cuda)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.speakers.split(",")]
    port = free_port()
    most = max(counts) + 2
    env = {
        **RUN_ENV,
        "ENGINE_ASR_DEVICE": args.device,
        "ENGINE_TTS_DEVICE": args.device,
        "MANAGEMENT_API_HOST": "127.0.0.1",
        "MANAGEMENT_API_PORT": str(port),
        "WEBSOCKET_URL": f"ws://127.0.0.1:{port}/ws",
        "MAX_SESSIONS": str(most * (args.rounds + 2)),
        "MAX_SESSIONS_PER_TUTOR": str(most * (args.rounds + 2)),
        "MAX_MESSAGES_PER_SECOND": "1000",
        "MAX_MESSAGES_BURST": "1000",
        "MAX_REQUESTS_PER_MINUTE": "100000",
        "ENGINE_START_TIMEOUT_SECONDS": "300",
        "LOG_LEVEL": "warning",
        "ENGINE_LOG_LEVEL": "warning",
    }
    gateway = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-speakers-") as state_dir:
        with process(
            [sys.executable, "-m", "tutor_gateway"],
            {**env, "STATE_DIR": state_dir},
            f"{gateway}/health",
        ) as server:
            result = asyncio.run(measure(gateway, server, counts, args.rounds))
    base = result.get("1_speakers", {}).get("first_audio_p50_ms")
    ratios = {
        f"{n}_over_1": round(result[f"{n}_speakers"]["first_audio_p50_ms"] / base, 2)
        for n in counts
        if n != 1 and base and result[f"{n}_speakers"]["first_audio_p50_ms"]
    }
    out = {
        "question": QUESTIONS["short"],
        "available_cores": available_cores(),
        "settings": {"rounds": args.rounds, "device": args.device, **RUN_ENV},
        "goal": "4 speakers <= 2.0x the 1-speaker p50, 8 <= 3.0x (CPU); 8 <= 1.3x on a GPU",
        **result,
        "p50_ratios": ratios,
    }
    print(write_result("speakers", out).read_text())


if __name__ == "__main__":
    main()
