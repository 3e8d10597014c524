"""History in this process's memory: for an engine run by hand; it dies with the process."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ..backends.base import ChatMessage
from .base import trimmed


class MemoryStore:
    """The store's contract in a dict (one process only: nothing is shared)."""

    name = "memory"

    def __init__(
        self, max_messages: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_messages
        self._ttl = ttl_seconds
        self._clock = clock
        self._history: dict[str, tuple[float, list[ChatMessage]]] = {}  # id -> (expiry, messages)
        self._ended: dict[str, float] = {}  # id -> expiry of its tombstone

    def _ended_now(self, session_id: str) -> bool:
        return self._ended.get(session_id, 0.0) > self._clock()

    def _messages(self, session_id: str) -> list[ChatMessage]:
        expiry, messages = self._history.get(session_id, (0.0, []))
        return messages if expiry > self._clock() else []

    async def load(self, session_id: str) -> list[ChatMessage] | None:
        return None if self._ended_now(session_id) else list(self._messages(session_id))

    async def append(self, session_id: str, messages: Sequence[ChatMessage]) -> bool:
        if self._ended_now(session_id):
            return False
        kept = trimmed([*self._messages(session_id), *messages], self._max)
        self._history[session_id] = (self._clock() + self._ttl, kept)
        return True

    async def end(self, session_id: str) -> None:
        self._history.pop(session_id, None)
        self._ended[session_id] = self._clock() + self._ttl

    async def purge(self) -> int:
        now = self._clock()
        before = len(self._history) + len(self._ended)
        self._history = {k: v for k, v in self._history.items() if v[0] > now}  # v: (expiry, _)
        self._ended = {k: expiry for k, expiry in self._ended.items() if expiry > now}
        return before - len(self._history) - len(self._ended)

    async def close(self) -> None:
        return None
