"""The three engine backends (LLM, ASR, TTS) as small interfaces.

Real backends import their inference library inside ``load()``, never at module import, so
the engine starts (and the gateway and operator install) without them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat prompt, in OpenAI's shape."""

    role: Role
    content: str


class AudioDecodeError(ValueError):
    """Audio that the ASR backend cannot decode; its text goes back to the client."""


def audio_too_long(limit_seconds: float) -> AudioDecodeError:
    """The error for audio found (while decoding, never after) to be longer than the limit."""
    return AudioDecodeError(
        f"Audio too long: more than {limit_seconds:g} s (limit {limit_seconds:g} s)"
    )


class Backend(Protocol):
    """Lifecycle every backend has: ``load`` (load and warm the model) and ``close``."""

    name: str

    async def load(self) -> None: ...

    async def close(self) -> None: ...


class LLM(Backend, Protocol):
    """A chat model that streams the reply's text in pieces."""

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]: ...


class ASR(Backend, Protocol):
    """Speech recognition: encoded audio (wav, webm/opus, ogg, mp3, …) in, text out."""

    async def transcribe(self, audio: bytes) -> str: ...


class TTS(Backend, Protocol):
    """Speech synthesis: text in, a complete WAV file out."""

    async def synthesize(self, text: str) -> bytes: ...
