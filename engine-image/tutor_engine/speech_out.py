"""Reply audio as the client asked for it: the TTS's WAV file as is, or raw PCM16 resampled.

Resampling uses PyAV's (FFmpeg's) resampler; PyAV comes with faster-whisper (the ``asr`` extra).
"""

from __future__ import annotations

import base64
import io
import wave


def wav_pcm16(wav: bytes) -> tuple[bytes, int]:
    """The mono PCM16 samples of a WAV file and their sample rate."""
    with wave.open(io.BytesIO(wav), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError("TTS audio must be mono PCM16")
        return w.readframes(w.getnframes()), w.getframerate()


def resample_pcm16(pcm: bytes, rate: int, to_rate: int) -> bytes:
    """Mono PCM16 at ``rate`` Hz as mono PCM16 at ``to_rate`` Hz."""
    if rate == to_rate or not pcm:
        return pcm
    import av
    import numpy as np

    frame = av.AudioFrame.from_ndarray(
        np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=to_rate)
    out = [*resampler.resample(frame), *resampler.resample(None)]
    return b"".join(f.to_ndarray().tobytes() for f in out)


def encode_speech(wav: bytes, pcm16_rate: int | None) -> str:
    """Base64 of the WAV, or (with ``pcm16_rate``) of its samples as PCM16 at that rate."""
    if pcm16_rate is None:
        return base64.b64encode(wav).decode("ascii")
    pcm, rate = wav_pcm16(wav)
    return base64.b64encode(resample_pcm16(pcm, rate, pcm16_rate)).decode("ascii")
