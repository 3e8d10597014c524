"""GPU checks (marker ``gpu``): skipped without CUDA; run them with scripts/run-gpu-tests.sh.

- a real vLLM OpenAI-compatible server (``ENGINE_TEST_VLLM_MODEL``, default a 0.5B instruct
  model from the local Hugging Face cache) streamed through OpenAICompatibleLLM;
- faster-whisper on CUDA (float16) and Piper on CUDA: the speech round trip on the GPU.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from tutor_engine.backends.base import ChatMessage
from tutor_engine.backends.faster_whisper_asr import FasterWhisperASR
from tutor_engine.backends.openai_llm import OpenAICompatibleLLM
from tutor_engine.backends.piper_tts import PiperTTS
from tutor_engine.config import EngineSettings

from .speech import real_speech_settings, words


def _has_cuda() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU (nvidia-smi finds none)"),
]


@pytest.fixture(scope="module")
def vllm_url() -> Iterator[str]:
    pytest.importorskip("vllm")
    model = os.environ.get("ENGINE_TEST_VLLM_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")
    port = int(os.environ.get("ENGINE_TEST_VLLM_PORT", "8011"))
    args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    args += ["--port", str(port), "--gpu-memory-utilization", "0.5", "--max-model-len", "2048"]
    proc = subprocess.Popen(args)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, "vLLM exited"
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        yield url
    finally:
        proc.terminate()
        proc.wait(60)


async def test_vllm_streams_a_reply(vllm_url: str) -> None:
    llm = OpenAICompatibleLLM(
        EngineSettings(_env_file=None, llm_backend="openai", llm_base_url=vllm_url)
    )
    await llm.load()
    pieces = [p async for p in llm.stream([ChatMessage("user", "Say hello in one word.")])]
    await llm.close()
    assert len(pieces) >= 1 and "".join(pieces).strip()


def test_speech_round_trip_on_cuda() -> None:
    settings = EngineSettings(
        _env_file=None,
        **real_speech_settings(asr_device="cuda", asr_compute_type="float16", tts_device="cuda"),
    )
    tts, asr = PiperTTS(settings), FasterWhisperASR(settings)
    asyncio.run(tts.load())
    asyncio.run(asr.load())
    wav = asyncio.run(tts.synthesize("The quick brown fox jumps over the lazy dog."))
    heard = asyncio.run(asr.transcribe(wav))
    assert {"quick", "brown", "fox", "lazy", "dog"} <= words(heard)
