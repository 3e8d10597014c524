"""Audio helpers with no protocol in them: WAV files in and out, PCM16 conversions, and reply
audio as the client asked for it (the TTS's WAV file as is, or raw PCM16 resampled).

Resampling uses PyAV's (FFmpeg's) resampler; PyAV comes with faster-whisper (the ``asr`` extra).
"""

from __future__ import annotations

import base64
import io
import struct
import wave
from collections.abc import Iterator
from typing import Any

PCM16_RATE = 16_000


class AudioDecodeError(ValueError):
    """Audio that cannot be decoded; its text goes back to the client."""


def pcm16_to_wav(pcm: bytes, sample_rate: int = PCM16_RATE) -> bytes:
    """Raw little-endian mono PCM16 wrapped in a WAV header."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
    return buf.getvalue()


def float_to_pcm16(samples: Any) -> bytes:
    """Float samples in [-1, 1] as little-endian PCM16 bytes."""
    import numpy as np

    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767).astype("<i2").tobytes()


def riff_chunks(data: bytes, pos: int) -> Iterator[tuple[bytes, bytes]]:
    """(chunk id, chunk body) pairs of a RIFF chunk list starting at ``pos``."""
    while pos + 8 <= len(data):
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        yield data[pos : pos + 4], data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)


def wav_duration(data: bytes) -> float:
    """Duration in seconds of the samples a PCM WAV file really holds.

    A header may claim hours of audio in a few bytes; the duration counts only the sample
    frames present, as a decoder would find them, and reads none of them.
    """
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            rate, frame_bytes = wav.getframerate(), wav.getnchannels() * wav.getsampwidth()
    except (wave.Error, EOFError) as exc:
        raise AudioDecodeError(f"Audio is not a readable WAV file: {exc}") from exc
    if rate <= 0 or frame_bytes <= 0:
        raise AudioDecodeError("Audio is not a readable WAV file: no sample rate or sample size")
    # The bytes of the data chunk that are really there, whatever its size field says.
    chunks = riff_chunks(data, 12)
    present = next((len(body) for chunk_id, body in chunks if chunk_id == b"data"), 0)
    return present // frame_bytes / rate


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
