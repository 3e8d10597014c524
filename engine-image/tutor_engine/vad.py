"""Voice activity detection for streamed audio: Silero VAD (the ONNX model faster-whisper
ships, run frame by frame through its torch-free ``faster_whisper.vad`` session) and the pure
endpointing logic that turns per-frame speech probabilities into start and end of speech.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

FRAME_SAMPLES = 512  # Silero's window at 16 kHz (32 ms)
SAMPLE_RATE = 16_000
FRAME_MS = FRAME_SAMPLES * 1000 / SAMPLE_RATE
_CONTEXT = 64  # samples of the previous frame the model sees before each frame


@dataclass(frozen=True)
class VadConfig:
    """When speech starts and ends (ENGINE_VAD_* settings)."""

    threshold: float = 0.5  # a frame at or above it is speech
    min_speech_ms: float = 160  # speech this long (in a row) is a start of speech
    silence_ms: float = 600  # frames under ``threshold - 0.15`` this long end it


class Endpointer:
    """Start/end of speech from per-frame probabilities; pure, one instance per stream.

    ``feed(p)`` returns ``"start"`` on the frame that completes ``min_speech_ms`` of speech,
    ``"stop"`` on the frame that completes ``silence_ms`` of silence after it, else None. Frame
    numbers of the last start and of the last speech frame are kept for the events.
    """

    def __init__(self, config: VadConfig) -> None:
        self.config = config
        self._need_speech = max(1, round(config.min_speech_ms / FRAME_MS))
        self._need_silence = max(1, round(config.silence_ms / FRAME_MS))
        self.frame = 0  # frames fed
        self.speaking = False
        self.start_frame = 0  # first frame of the speech run that started
        self.last_speech_frame = 0
        self._run = 0  # speech frames in a row (before a start) / silent frames (during speech)

    def reset(self) -> None:
        """Back to silence (the utterance was committed or dropped)."""
        self.speaking, self._run = False, 0

    def feed(self, probability: float) -> str | None:
        self.frame += 1
        c = self.config
        if not self.speaking:
            self._run = self._run + 1 if probability >= c.threshold else 0
            if self._run >= self._need_speech:
                self.speaking, self._run = True, 0
                self.start_frame = self.frame - self._need_speech
                self.last_speech_frame = self.frame
                return "start"
            return None
        if probability >= max(c.threshold - 0.15, 0.01):
            self._run = 0
            self.last_speech_frame = self.frame
            return None
        self._run += 1
        if self._run >= self._need_silence:
            self.speaking, self._run = False, 0
            return "stop"
        return None


@functools.cache
def shared_model() -> Any:
    """The engine's one Silero ONNX session (``silero_vad_v6.onnx`` in the faster-whisper
    package), loaded at first use and shared by every stream (each keeps its own state)."""
    from faster_whisper.utils import get_assets_path
    from faster_whisper.vad import SileroVADModel

    return SileroVADModel(os.path.join(get_assets_path(), "silero_vad_v6.onnx")).session


class SileroStream:
    """Speech probability of each 512-sample frame, in order, carrying the model's state."""

    def __init__(self, session: Any) -> None:
        import numpy as np

        self._np = np
        self._run = session.run
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, _CONTEXT), dtype=np.float32)

    def __call__(self, frame: Any) -> float:
        np = self._np
        window = np.concatenate([self._context, frame.reshape(1, -1)], axis=1)
        out, self._h, self._c = self._run(None, {"input": window, "h": self._h, "c": self._c})
        self._context = window[:, -_CONTEXT:]
        return float(out.reshape(-1)[0])
