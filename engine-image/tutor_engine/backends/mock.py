"""Deterministic mock backends: no model, instant, and visibly faithful to their input.

- MockLLM's reply quotes the user's message, names the tutor and counts the history it saw;
  it reports token usage as a server would (about four characters a prompt token, one token
  per word of the reply).
- MockTTS returns a valid 16 kHz mono WAV whose duration grows with the text, carrying the
  text in a RIFF ``LIST/INFO/ICMT`` chunk; MockASR reads that chunk back, so a mock
  TTS → ASR round trip returns the same words, as a real pair would.
"""

from __future__ import annotations

import asyncio
import functools
import math
import struct
from collections.abc import AsyncIterator, Sequence

from ..audio import AudioDecodeError, pcm16_to_wav, riff_chunks, wav_duration
from .base import ChatMessage, DecodedAudio, Usage, audio_too_long

SAMPLE_RATE = 16_000
SECONDS_PER_CHAR = 0.06
MESSAGE_OVERHEAD_TOKENS = 4  # chat-template framing per message, as prompt.py assumes


def mock_prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    """What the mock reports as a prompt's token count: ~4 characters a token, plus framing."""
    return sum((len(m.content) + 3) // 4 + MESSAGE_OVERHEAD_TOKENS for m in messages)


class _NoModel:
    """A mock's lifecycle: no model to load or release."""

    async def load(self) -> None:
        return None

    async def close(self) -> None:
        return None


class MockLLM(_NoModel):
    """Echoes the last user message with the tutor id and the size of the history."""

    name = "mock-llm"

    def __init__(self, tutor_id: int, delay_s: float = 0.0, load_s: float = 0.0) -> None:
        self.tutor_id = tutor_id
        self.delay_s = delay_s
        self.load_s = load_s  # how long "loading the model" takes

    async def load(self) -> None:
        if self.load_s:
            await asyncio.sleep(self.load_s)

    async def stream(
        self, messages: Sequence[ChatMessage], usage: Usage | None = None
    ) -> AsyncIterator[str]:
        if usage is not None:
            usage.prompt_tokens = mock_prompt_tokens(messages)
        user = [m for m in messages if m.role == "user"]
        earlier = sum(1 for m in messages[:-1] if m.role != "system")
        last = user[-1].content if user else ""
        reply = (
            f"Tutor {self.tutor_id} heard: {last}. "
            f"This is turn {len(user)}, with {earlier} earlier messages in this session."
        )
        for word in reply.split(" "):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if usage is not None:
                usage.completion_tokens += 1
            yield word + " "


@functools.cache
def _tone_second(sample_rate: int) -> bytes:
    """One second of a quiet 220 Hz tone, PCM16 mono."""
    return b"".join(
        struct.pack("<h", int(1000 * math.sin(2 * math.pi * 220 * i / sample_rate)))
        for i in range(sample_rate)
    )


def make_wav(text: str, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A quiet tone as long as the text takes to say, with the text in an ICMT chunk."""
    frames = max(1, int(len(text) * SECONDS_PER_CHAR * sample_rate))
    pcm = (_tone_second(sample_rate) * (frames // sample_rate + 1))[: frames * 2]
    riff = pcm16_to_wav(pcm, sample_rate)
    comment = text.encode("utf-8") + b"\x00"
    if len(comment) % 2:
        comment += b"\x00"
    info = b"INFO" + b"ICMT" + struct.pack("<I", len(comment)) + comment
    body = riff[8:] + b"LIST" + struct.pack("<I", len(info)) + info
    return b"RIFF" + struct.pack("<I", len(body)) + body


def read_wav_comment(data: bytes) -> str | None:
    """The ICMT text of a RIFF/WAVE file, or None if it has none; raises on non-WAV bytes."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioDecodeError("Audio is not a WAV file (the mock recogniser reads WAV only)")
    for chunk_id, body in riff_chunks(data, 12):
        if chunk_id == b"LIST" and body[:4] == b"INFO":
            for sub_id, text in riff_chunks(body, 4):
                if sub_id == b"ICMT":
                    return text.split(b"\x00")[0].decode("utf-8", errors="replace")
    return None


class MockASR(_NoModel):
    """Reads back the text MockTTS embedded; other WAVs are described by their duration."""

    name = "mock-asr"
    on_cpu = True

    def __init__(self, max_audio_seconds: float = 60.0) -> None:
        self.max_audio_seconds = max_audio_seconds

    async def decode(self, audio: bytes) -> DecodedAudio:
        """The embedded text (``None`` if none) as the "samples", and the WAV's duration."""
        comment = read_wav_comment(audio)
        duration = wav_duration(audio)
        if duration > self.max_audio_seconds:
            raise audio_too_long(self.max_audio_seconds)
        return DecodedAudio(comment, duration)

    async def recognize(self, audio: DecodedAudio) -> str:
        if isinstance(audio.samples, str):
            return audio.samples
        return f"(speech, {audio.seconds:.2f} seconds)"

    async def transcribe(self, audio: bytes) -> str:
        return await self.recognize(await self.decode(audio))


class MockTTS(_NoModel):
    """Synthesises a placeholder WAV whose length grows with the text."""

    name = "mock-tts"
    on_cpu = True

    async def synthesize(self, text: str) -> bytes:
        return make_wav(text)
