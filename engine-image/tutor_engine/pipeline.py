"""One conversational turn: (speech →) text → LLM → text (→ speech), with history."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .backends import Backends, ChatMessage
from .history import ConversationStore
from .protocol import (
    AudioIn,
    TextIn,
    audio_message,
    error_message,
    text_message,
    transcription_message,
)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class TutorPipeline:
    """Runs turns for every session of one tutor against that tutor's backends."""

    def __init__(self, backends: Backends, store: ConversationStore, system_prompt: str) -> None:
        self.backends = backends
        self.store = store
        self.system_prompt = system_prompt

    def prompt(self, session_id: str, user_text: str) -> list[ChatMessage]:
        """System prompt, the session's history, then the new user message."""
        return [
            ChatMessage("system", self.system_prompt),
            *self.store.history(session_id),
            ChatMessage("user", user_text),
        ]

    async def reply(self, session_id: str, user_text: str) -> str:
        """Generate the assistant's answer and record both messages in the history."""
        prompt = self.prompt(session_id, user_text)
        answer = "".join([piece async for piece in self.backends.llm.stream(prompt)]).strip()
        self.store.append(
            session_id, ChatMessage("user", user_text), ChatMessage("assistant", answer)
        )
        return answer

    async def run_turn(self, session_id: str, message: TextIn | AudioIn, send: Send) -> None:
        """Answer text with ``text``; audio with ``transcription``, ``text`` and ``audio``."""
        if isinstance(message, TextIn):
            await send(text_message(await self.reply(session_id, message.content)))
            return
        heard = (await self.backends.asr.transcribe(message.data)).strip()
        if not heard:
            await send(error_message("No speech was recognised in the audio"))
            return
        await send(transcription_message(heard))
        answer = await self.reply(session_id, heard)
        await send(text_message(answer))
        await send(audio_message(answer, await self.backends.tts.synthesize(answer)))
