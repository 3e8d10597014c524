"""The real Piper voice and faster-whisper tiny.en on CPU: each hears what the other says."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave
from collections.abc import Iterator

import pytest
from tutor_engine.backends import AudioDecodeError
from tutor_engine.backends.faster_whisper_asr import FasterWhisperASR
from tutor_engine.backends.piper_tts import PiperTTS
from tutor_engine.config import EngineSettings
from tutor_engine.protocol import AudioIn, parse_client_frame

from .speech import encode, real_speech_settings, words

pytestmark = pytest.mark.slow

SENTENCE = "The quick brown fox jumps over the lazy dog."
CONTENT = {"quick", "brown", "fox", "jumps", "lazy", "dog"}


@pytest.fixture(scope="module")
def settings() -> EngineSettings:
    return EngineSettings(_env_file=None, **real_speech_settings(max_audio_seconds=8))


@pytest.fixture(scope="module")
def models(settings: EngineSettings) -> Iterator[tuple[PiperTTS, FasterWhisperASR]]:
    tts, asr = PiperTTS(settings), FasterWhisperASR(settings)
    asyncio.run(tts.load())
    asyncio.run(asr.load())
    yield tts, asr


@pytest.fixture(scope="module")
def speech(models: tuple[PiperTTS, FasterWhisperASR]) -> bytes:
    return asyncio.run(models[0].synthesize(SENTENCE))


def test_piper_speaks_a_wav_file(speech: bytes) -> None:
    with wave.open(io.BytesIO(speech)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 22050)
        assert 1.5 < wav.getnframes() / wav.getframerate() < 6


async def test_whisper_hears_what_piper_said(
    models: tuple[PiperTTS, FasterWhisperASR], speech: bytes
) -> None:
    assert CONTENT <= words(await models[1].transcribe(speech))


@pytest.mark.parametrize(
    ("container", "codec"), [("webm", "libopus"), ("ogg", "libopus"), ("mp3", "libmp3lame")]
)
async def test_browser_formats_are_decoded(
    models: tuple[PiperTTS, FasterWhisperASR], speech: bytes, container: str, codec: str
) -> None:
    assert CONTENT <= words(await models[1].transcribe(encode(speech, container, codec)))


async def test_raw_16khz_pcm16_is_heard(
    models: tuple[PiperTTS, FasterWhisperASR], speech: bytes
) -> None:
    import numpy as np
    from faster_whisper import decode_audio

    pcm = (decode_audio(io.BytesIO(speech)) * 32767).astype("<i2").tobytes()
    data = base64.b64encode(pcm).decode()
    frame = json.dumps({"type": "audio", "format": "pcm16", "data": data})
    message = parse_client_frame(frame, max_bytes=1 << 22, max_text_chars=10)
    assert isinstance(message, AudioIn)
    assert CONTENT <= words(await models[1].transcribe(message.data))
    assert np.frombuffer(pcm, dtype="<i2").size > 16000


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"this is not audio at all" * 10, "Could not decode the audio"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "Could not decode the audio"),
    ],
)
async def test_undecodable_audio_is_a_clear_error(
    models: tuple[PiperTTS, FasterWhisperASR], data: bytes, error: str
) -> None:
    with pytest.raises(AudioDecodeError, match=error):
        await models[1].transcribe(data)


async def test_too_long_audio_is_refused(
    models: tuple[PiperTTS, FasterWhisperASR],
) -> None:
    long_speech = await models[0].synthesize(" ".join([SENTENCE] * 4))
    with pytest.raises(AudioDecodeError, match=r"^Audio too long: more than 8 s \(limit 8 s\)$"):
        await models[1].transcribe(long_speech)
