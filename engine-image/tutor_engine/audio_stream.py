"""One connection's streamed audio input: PCM16 chunks in, utterances out (pure, no I/O).

Chunks are converted to float32 as they arrive, so an utterance is ready for recognition the
moment it ends (nothing is decoded at commit). With VAD, each 512-sample frame gets a speech
probability (``probability``: Silero in the engine, anything in tests); ``Endpointer`` turns
them into ``speech_started`` / ``speech_stopped``, and an end of speech yields the utterance,
from ``PAD_MS`` before the start to ``PAD_MS`` after the last speech frame. Without VAD, the
audio since the last turn waits for ``commit``. One utterance is at most ``max_seconds``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .vad import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, Endpointer, VadConfig

PAD_MS = 300  # audio kept before a start and after an end of speech


@dataclass(frozen=True)
class SpeechEvent:
    """``speech_started`` or ``speech_stopped`` at ``audio_ms`` of the stream."""

    kind: str
    audio_ms: int


@dataclass(frozen=True)
class Utterance:
    """A finished utterance: 16 kHz float32 samples."""

    samples: Any
    seconds: float


@dataclass(frozen=True)
class TooLong:
    """The utterance passed the limit and was dropped."""

    limit_seconds: float


Event = SpeechEvent | Utterance | TooLong


def pcm16_samples(pcm: bytes) -> Any:
    """Little-endian PCM16 as float32 in [-1, 1)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


class AudioStream:
    """The state of one audio input stream (opened by ``audio_start``)."""

    def __init__(
        self,
        max_seconds: float,
        vad: VadConfig | None = None,
        probability: Callable[[Any], float] | None = None,
    ) -> None:
        if vad is not None and probability is None:
            raise ValueError("VAD needs a probability function")
        self.max_samples = int(max_seconds * SAMPLE_RATE)
        self.max_seconds = max_seconds
        self.endpointer = Endpointer(vad) if vad is not None else None
        self._probability = probability
        self._pad = int(PAD_MS * SAMPLE_RATE / 1000)
        self._buffer = np.empty(0, dtype=np.float32)
        self._origin = 0  # stream sample index of ``_buffer[0]``
        self._vad_at = 0  # stream sample index of the next frame the VAD has not seen
        self._start = 0  # stream sample index where the current utterance begins
        # The utterance passed the limit: its audio is dropped until it ends (commit or cancel;
        # with VAD, its end of speech), so no tail of it becomes a turn.
        self.overflowed = False

    @property
    def total(self) -> int:
        """Samples received so far."""
        return self._origin + len(self._buffer)

    @property
    def speaking(self) -> bool:
        return self.endpointer is not None and self.endpointer.speaking

    def append(self, pcm: bytes) -> list[Event]:
        """Add a chunk (an even number of bytes); what it caused, in order."""
        if self.endpointer is None and self.overflowed:
            return []
        self._buffer = np.concatenate([self._buffer, pcm16_samples(pcm)])
        if self.endpointer is None:
            return self._bounded(self._origin)
        events: list[Event] = []
        while self.total - self._vad_at >= FRAME_SAMPLES:
            i = self._vad_at - self._origin
            frame = self._buffer[i : i + FRAME_SAMPLES]
            self._vad_at += FRAME_SAMPLES
            events.extend(self._on_frame(frame))
        if self.overflowed:
            self._drop_before(self._vad_at)
        elif self.speaking:
            events.extend(self._bounded(self._start))
        else:  # keep only what a start could reach back to
            self._drop_before(self._vad_at - self._pad - self._min_speech_samples())
        return events

    def _min_speech_samples(self) -> int:
        assert self.endpointer is not None
        return int(self.endpointer.config.min_speech_ms * SAMPLE_RATE / 1000) + FRAME_SAMPLES

    def _on_frame(self, frame: Any) -> list[Event]:
        assert self.endpointer is not None and self._probability is not None
        change = self.endpointer.feed(self._probability(frame))
        if change == "start":
            begin = self.endpointer.start_frame * FRAME_SAMPLES
            self._start = max(self._origin, begin - self._pad)
            return [SpeechEvent("speech_started", round(self.endpointer.start_frame * FRAME_MS))]
        if change == "stop":
            last = self.endpointer.last_speech_frame
            end = min(self.total, last * FRAME_SAMPLES + self._pad)
            stopped = SpeechEvent("speech_stopped", round(last * FRAME_MS))
            if self.overflowed:
                self.overflowed = False
                return [stopped]
            return [stopped, self._take(self._start, end)]
        return []

    def _bounded(self, start: int) -> list[Event]:
        if self.total - start <= self.max_samples:
            return []
        self._drop_before(self.total if self.endpointer is None else self._vad_at)
        self.overflowed = True
        return [TooLong(self.max_seconds)]

    def _take(self, start: int, end: int) -> Utterance:
        samples = self._buffer[start - self._origin : end - self._origin].copy()
        # Samples the VAD has not seen yet stay (the padding may reach past them).
        self._drop_before(end if self.endpointer is None else min(end, self._vad_at))
        return Utterance(samples, len(samples) / SAMPLE_RATE)

    def _drop_before(self, index: int) -> None:
        index = min(max(index, self._origin), self.total)
        self._buffer = self._buffer[index - self._origin :]
        self._origin = index

    def commit(self) -> Utterance | None:
        """The utterance so far (None if there is none: no audio, or with VAD no speech, or
        it was too long)."""
        if self.overflowed:
            self.cancel()
            return None
        if self.endpointer is None:
            if not len(self._buffer):
                return None
            return self._take(self._origin, self.total)
        if not self.endpointer.speaking:
            return None
        self.endpointer.reset()
        return self._take(self._start, self.total)

    def cancel(self) -> None:
        """Drop the utterance in progress (no turn)."""
        self.overflowed = False
        if self.endpointer is None:
            self._drop_before(self.total)
            return
        self.endpointer.reset()
        self._drop_before(self._vad_at)  # a partial frame waits for the rest of its samples
