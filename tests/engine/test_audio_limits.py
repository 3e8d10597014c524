"""Audio is measured while it is decoded, never from what its header claims, and never past
the limit: FLAC and WAV "bombs" (hours of audio in kilobytes) cost no more than the limit."""

from __future__ import annotations

import io
import resource
import struct
import time
import wave

import pytest
from tutor_engine.audio import wav_duration
from tutor_engine.backends import AudioDecodeError
from tutor_engine.backends.mock import MockASR, make_wav

TOO_LONG = r"^Audio too long: more than 30 s \(limit 30 s\)$"


def wav(seconds: float, rate: int = 16_000, sampwidth: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(sampwidth)
        out.setframerate(rate)
        out.writeframes(b"\x00" * sampwidth * int(seconds * rate))
    return buf.getvalue()


def lying_wav(seconds: float, claimed_bytes: int) -> bytes:
    """A WAV whose data chunk says it holds ``claimed_bytes`` but holds ``seconds``."""
    data = bytearray(wav(seconds))
    at = data.index(b"data")
    data[at + 4 : at + 8] = struct.pack("<I", claimed_bytes)
    return bytes(data)


def flac_silence(seconds: int, rate: int = 16_000) -> bytes:
    """``seconds`` of silence as FLAC: ~180 bytes per second."""
    av = pytest.importorskip("av")
    np = pytest.importorskip("numpy")
    out = io.BytesIO()
    with av.open(out, "w", format="flac") as muxer:
        stream = muxer.add_stream("flac", rate=rate)
        stream.layout = "mono"
        second = np.zeros((1, rate), dtype=np.int16)
        for i in range(seconds):
            frame = av.AudioFrame.from_ndarray(second, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, i * rate
            for packet in stream.encode(frame):
                muxer.mux(packet)
        for packet in stream.encode(None):
            muxer.mux(packet)
    return out.getvalue()


def test_the_mock_counts_the_samples_a_wav_really_holds() -> None:
    assert wav_duration(wav(2.5)) == 2.5
    assert wav_duration(lying_wav(1.0, claimed_bytes=2**31)) == 1.0  # header claims 18 h
    assert wav_duration(wav(4, rate=8000, sampwidth=1)) == 4


async def test_the_mock_honours_the_duration_limit() -> None:
    asr = MockASR(max_audio_seconds=30)
    with pytest.raises(AudioDecodeError, match=TOO_LONG):
        await asr.transcribe(wav(31))
    assert await asr.transcribe(wav(30)) == "(speech, 30.00 seconds)"
    assert await asr.transcribe(lying_wav(1.0, 2**31)) == "(speech, 1.00 seconds)"
    assert await asr.transcribe(make_wav("Hello there.")) == "Hello there."


@pytest.mark.parametrize(
    "data",
    [
        b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00"
        + b"\x00" * 4  # sample rate 0
        + b"\x00" * 4
        + b"\x02\x00\x10\x00data\x00\x00\x00\x00",
        b"RIFF\x04\x00\x00\x00WAVE",
    ],
)
async def test_the_mock_refuses_broken_wavs_cleanly(data: bytes) -> None:
    with pytest.raises(AudioDecodeError, match="WAV"):
        await MockASR().transcribe(data)


def test_a_flac_bomb_stops_decoding_at_the_limit() -> None:
    from tutor_engine.backends.faster_whisper_asr import decode_limited

    bomb = flac_silence(20 * 60)  # 20 minutes: ~300 MB to decode in full the old way
    assert len(bomb) < 400_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    with pytest.raises(AudioDecodeError, match=TOO_LONG):
        decode_limited(bomb, max_seconds=30)
    took = time.perf_counter() - started
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    assert grew < 50, f"peak RSS grew {grew:.0f} MB"
    assert took < 10  # generous: a full decode would be ~40x the work of the first 30 s


def test_audio_under_the_limit_decodes_to_16khz_float32() -> None:
    from tutor_engine.backends.faster_whisper_asr import decode_limited

    samples = decode_limited(flac_silence(3, rate=22_050), max_seconds=30)
    assert samples.dtype.name == "float32"
    assert abs(len(samples) - 3 * 16_000) < 1600
    samples = decode_limited(wav(30), max_seconds=30)  # exactly at the limit is fine
    assert abs(len(samples) - 30 * 16_000) < 1600


def test_a_low_sample_rate_cannot_multiply_the_resampled_size() -> None:
    from tutor_engine.backends.faster_whisper_asr import decode_limited

    # 1 s of bytes at 16 kHz is 32 min at 8 Hz (if FFmpeg accepts it) — refused before
    # resampling it 2000-fold, or refused as undecodable.
    with pytest.raises(AudioDecodeError, match=r"Audio too long|Could not decode"):
        decode_limited(wav(1.0, rate=16_000)[:24] + struct.pack("<II", 8, 16) + wav(1.0)[32:], 30)


@pytest.mark.parametrize("data", [b"this is not audio at all" * 10, b"", b"RIFF\x24\x00\x00\x00"])
def test_garbage_is_undecodable_not_a_crash(data: bytes) -> None:
    from tutor_engine.backends.faster_whisper_asr import decode_limited

    pytest.importorskip("av")
    with pytest.raises(AudioDecodeError, match="Could not decode the audio"):
        decode_limited(data, max_seconds=30)
