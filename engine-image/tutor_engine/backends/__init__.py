"""Engine backends, chosen by configuration; real ones are imported only when selected."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..config import EngineSettings
from .base import ASR, LLM, TTS, AudioDecodeError, ChatMessage
from .mock import MockASR, MockLLM, MockTTS

__all__ = ["ASR", "LLM", "TTS", "AudioDecodeError", "Backends", "ChatMessage", "build_backends"]

# backend name -> "module:Class"; each class takes the EngineSettings.
_REAL = {
    ("llm", "openai"): "tutor_engine.backends.openai_llm:OpenAICompatibleLLM",
    ("asr", "faster-whisper"): "tutor_engine.backends.faster_whisper_asr:FasterWhisperASR",
    ("tts", "piper"): "tutor_engine.backends.piper_tts:PiperTTS",
    ("tts", "coqui"): "tutor_engine.backends.coqui_tts:CoquiTTS",
}


@dataclass
class Backends:
    """The three backends one engine runs."""

    llm: LLM
    asr: ASR
    tts: TTS

    def all(self) -> tuple[LLM, ASR, TTS]:
        return (self.llm, self.asr, self.tts)


def _real(kind: str, name: str, settings: EngineSettings):  # type: ignore[no-untyped-def]
    module_name, _, class_name = _REAL[(kind, name)].partition(":")
    return getattr(importlib.import_module(module_name), class_name)(settings)


def build_backends(settings: EngineSettings) -> Backends:
    """Instantiate (not load) the backends the settings name."""
    llm = (
        MockLLM(settings.tutor_id)
        if settings.llm_backend == "mock"
        else _real("llm", settings.llm_backend, settings)
    )
    asr = (
        MockASR(settings.max_audio_seconds)
        if settings.asr_backend == "mock"
        else _real("asr", settings.asr_backend, settings)
    )
    tts = (
        MockTTS()
        if settings.tts_backend == "mock"
        else _real("tts", settings.tts_backend, settings)
    )
    return Backends(llm=llm, asr=asr, tts=tts)
