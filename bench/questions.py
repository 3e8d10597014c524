"""The spoken questions the voice benchmarks ask: espeak-ng (a voice unlike the tutor's Piper
voice) saying a ~2 s and a ~5 s question, as 16 kHz mono PCM16 WAV.

    from bench.questions import spoken
    wav = spoken("short")  # bytes of a WAV file; QUESTIONS["short"] is its text
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

QUESTIONS = {
    "short": "Tell me what a prime number is.",  # 2.2 s at 150 words per minute
    "long": "Could you explain how photosynthesis works, and why leaves are green?",  # 4.8 s
}
SAMPLE_RATE = 16_000


@functools.cache
def spoken(name: str) -> bytes:
    """``QUESTIONS[name]`` spoken by espeak-ng, resampled to 16 kHz mono PCM16 (a WAV file)."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is missing: run `make browser-deps` (it installs it)")
    import av

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "question.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), QUESTIONS[name]], check=True)
        pcm = bytearray()
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        with av.open(str(path)) as container:
            for frame in container.decode(audio=0):
                for chunk in resampler.resample(frame):
                    pcm += chunk.to_ndarray().tobytes()
        for chunk in resampler.resample(None):
            pcm += chunk.to_ndarray().tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(bytes(pcm))
    return buffer.getvalue()


def seconds(wav: bytes) -> float:
    """The duration of a WAV file."""
    with wave.open(io.BytesIO(wav)) as w:
        return w.getnframes() / w.getframerate()


def speech_end(wav: bytes, floor: float = 0.01) -> float:
    """Where the speech of a PCM16 WAV ends (its last sample above ``floor`` of full scale), in
    seconds: espeak-ng's files end with ~0.4 s of silence."""
    import numpy as np

    with wave.open(io.BytesIO(wav)) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        loud = np.nonzero(np.abs(samples) > floor * 32768)[0]
        return (int(loud[-1]) + 1) / w.getframerate() if loud.size else 0.0
