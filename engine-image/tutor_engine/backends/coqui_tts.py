"""Speech synthesis with Coqui TTS (the ``coqui-tts`` package): XTTS-v2, VITS and the rest.

``ENGINE_TTS_MODEL`` is either a model folder or ``model.pth`` file on disk (its
``config.json`` beside it, or ``ENGINE_TTS_CONFIG``) or a Coqui model name such as
``tts_models/multilingual/multi-dataset/xtts_v2`` (downloaded to the Coqui cache on first use,
``TTS_HOME`` or ``~/.local/share/tts``). Models under a licence, XTTS among them, load by name
only once it is accepted: ``COQUI_TOS_AGREED=1``, or the ``tos_agreed.txt`` Coqui writes beside
the download; without it the engine fails at once instead of Coqui asking on standard input.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from ..audio import float_to_pcm16, pcm16_to_wav
from ..config import EngineSettings
from ..text import speakable

log = logging.getLogger("tutor_engine.tts")


# What a model on disk looks like when it is missing, as opposed to a Coqui model name.
_PATH_SUFFIXES = (".pth", ".pt", ".tar", ".json")


def model_files(model: str, config: str) -> tuple[str, str] | None:
    """(checkpoint, config) for a model on disk, or None when ``model`` is a Coqui name."""
    path = Path(model)
    if path.is_dir():
        checkpoints = sorted(path.glob("*.pth"))
        if not checkpoints:
            raise FileNotFoundError(f"No .pth checkpoint in {path}")
        path = checkpoints[0]
    elif not path.is_file():
        if path.is_absolute() or model.startswith((".", "~")) or path.suffix in _PATH_SUFFIXES:
            raise FileNotFoundError(f"ENGINE_TTS_MODEL {model} does not exist")
        return None
    config = config or str(path.with_name("config.json"))
    if not Path(config).is_file():
        raise FileNotFoundError(f"No Coqui config {config} (set ENGINE_TTS_CONFIG)")
    return str(path), config


def licence_unanswered(name: str) -> bool:
    """Whether loading Coqui model ``name`` would ask on standard input to accept its licence.

    Uses Coqui's own check; False when this Coqui version has no such check or does not know the
    name (loading then reports it).
    """
    from TTS.utils.manage import ModelManager

    manager = ModelManager(progress_bar=False)
    try:
        item, full_name, _ = manager._set_model_item(name)
        return not manager.tos_agreed(item, manager.output_prefix / full_name)
    except (AttributeError, KeyError, ValueError):
        return False


def load_by_name(name: str) -> Any:
    """A Coqui model by name: from the Coqui cache, else downloaded; clear errors when it can't."""
    from TTS.api import TTS

    if licence_unanswered(name):
        raise RuntimeError(
            f"Coqui model {name} needs its licence accepted (CPML or a commercial licence): "
            "set COQUI_TOS_AGREED=1 once you have"
        )
    try:
        return TTS(model_name=name, progress_bar=False)
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"ENGINE_TTS_MODEL {name} is neither on disk nor a Coqui model name "
            f"(`tts --list_models` lists them): {e!r}"
        ) from e
    except OSError as e:  # requests' and huggingface_hub's errors are OSErrors
        raise RuntimeError(
            f"Coqui model {name} is not in the Coqui cache and could not be downloaded: {e!r}. "
            "Without network, download it elsewhere and set ENGINE_TTS_MODEL to its folder"
        ) from e


class CoquiTTS:
    """A Coqui ``TTS`` model on ``ENGINE_TTS_DEVICE`` (``auto``: CUDA when torch sees one)."""

    name = "coqui"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self._tts: Any = None
        self.on_cpu = True

    async def load(self) -> None:
        """Load the model and synthesise one word to warm it."""
        self._tts = await asyncio.to_thread(self._load)

    def _load(self) -> Any:
        import torch
        from TTS.api import TTS

        s = self.settings
        if not s.tts_model:
            raise ValueError("ENGINE_TTS_MODEL must name a Coqui model or point to one on disk")
        files = model_files(s.tts_model, s.tts_config)
        tts = (
            TTS(model_path=files[0], config_path=files[1], progress_bar=False)
            if files
            else load_by_name(s.tts_model)
        )
        device = s.tts_device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        tts.to(device)
        self._tts = tts
        self.on_cpu = device == "cpu"
        self._speak("Hello.")
        log.info("coqui model %s loaded on %s", s.tts_model, device)
        return tts

    async def close(self) -> None:
        self._tts = None

    async def synthesize(self, text: str) -> bytes:
        return await asyncio.to_thread(self._synthesize, text)

    def _synthesize(self, text: str) -> bytes:
        text = speakable(text)
        samples = self._speak(text) if text else []
        return pcm16_to_wav(float_to_pcm16(samples), int(self._tts.synthesizer.output_sample_rate))

    def _speak(self, text: str) -> Any:
        s, tts = self.settings, self._tts
        kwargs: dict[str, Any] = {}
        if tts.is_multi_speaker:
            if s.tts_speaker_wav:
                kwargs["speaker_wav"] = s.tts_speaker_wav
            else:
                kwargs["speaker"] = s.tts_speaker or tts.speakers[0]
        if tts.is_multi_lingual:
            kwargs["language"] = s.tts_language
        return tts.tts(text=text, **kwargs)
