"""Per-session conversation history, bounded in length and dropped after inactivity."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from .backends.base import ChatMessage


class ConversationStore:
    """History of every session this engine serves, keyed by session id, never shared."""

    def __init__(
        self,
        max_messages: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_messages
        self._ttl = ttl_seconds
        self._clock = clock
        self._turns: dict[str, deque[ChatMessage]] = {}
        self._seen: dict[str, float] = {}

    def history(self, session_id: str) -> list[ChatMessage]:
        """The session's messages, oldest first (empty for a new session)."""
        self._seen[session_id] = self._clock()
        return list(self._turns.get(session_id, ()))

    def append(self, session_id: str, *messages: ChatMessage) -> None:
        """Record messages, keeping only the newest ``max_messages``."""
        turns = self._turns.setdefault(session_id, deque(maxlen=self._max or None))
        if self._max:
            turns.extend(messages)
        self._seen[session_id] = self._clock()

    def drop(self, session_id: str) -> bool:
        """Forget a session; True if it had any state."""
        self._seen.pop(session_id, None)
        return self._turns.pop(session_id, None) is not None

    def expire(self) -> list[str]:
        """Drop sessions idle longer than the TTL and return their ids."""
        cutoff = self._clock() - self._ttl
        stale = [sid for sid, seen in self._seen.items() if seen < cutoff]
        for sid in stale:
            self.drop(sid)
        return stale

    def __len__(self) -> int:
        return len(self._turns)
