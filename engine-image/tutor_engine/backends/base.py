"""The three engine backends (LLM, ASR, TTS) as small interfaces.

Real backends import their inference library inside ``load()``, never at module import, so
the engine starts (and the gateway and operator install) without them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..audio import AudioDecodeError

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat prompt, in OpenAI's shape."""

    role: Role
    content: str


@dataclass
class Usage:
    """Tokens of one LLM request, as the server reports them (filled in while it streams)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class DecodedAudio:
    """A user's audio decoded for recognition: the samples (as the recogniser takes them) and
    their duration."""

    samples: Any
    seconds: float


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
    """A chat model that streams the reply's text in pieces.

    ``usage``, if given, gets the request's token counts as the server reports them (an
    interrupted stream may leave it unfilled).
    """

    def stream(
        self, messages: Sequence[ChatMessage], usage: Usage | None = None
    ) -> AsyncIterator[str]: ...


class ASR(Backend, Protocol):
    """Speech recognition: encoded audio (wav, webm/opus, ogg, mp3, …) in, text out.

    In two steps, so each is measured: ``decode`` (bytes to samples, AudioDecodeError if it
    cannot) and ``recognize``; ``transcribe`` is both. ``on_cpu``: its model runs on the CPU
    (known once loaded).
    """

    on_cpu: bool

    async def decode(self, audio: bytes) -> DecodedAudio: ...

    async def recognize(self, audio: DecodedAudio) -> str: ...

    async def transcribe(self, audio: bytes) -> str: ...


class TTS(Backend, Protocol):
    """Speech synthesis: text in, a complete WAV file out; ``on_cpu`` as for ASR."""

    on_cpu: bool

    async def synthesize(self, text: str) -> bytes: ...
