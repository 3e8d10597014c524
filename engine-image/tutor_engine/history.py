"""Per-session conversation history, bounded in length and dropped after inactivity.

A session ended through ``end`` (``DELETE /sessions/{id}``) is remembered for a while, in a
bounded cache, so that a reply still finishing for it cannot write its history again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from cachetools import TTLCache

from .backends.base import ChatMessage


class ConversationStore:
    """History of every session this engine serves, keyed by session id, never shared."""

    def __init__(
        self,
        max_messages: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_ended: int = 10_000,
    ) -> None:
        self._max = max_messages
        self._ttl = ttl_seconds
        self._clock = clock
        self._turns: dict[str, deque[ChatMessage]] = {}
        self._seen: dict[str, float] = {}
        self._ended: TTLCache[str, bool] = TTLCache(max_ended, ttl_seconds, timer=clock)

    def history(self, session_id: str) -> list[ChatMessage]:
        """The session's messages, oldest first (empty for a new or ended session)."""
        if self.ended(session_id):
            return []
        self._seen[session_id] = self._clock()
        return list(self._turns.get(session_id, ()))

    def append(self, session_id: str, *messages: ChatMessage) -> None:
        """Record messages, keeping only the newest ``max_messages`` (none for an ended one)."""
        if self.ended(session_id):
            return
        turns = self._turns.setdefault(session_id, deque(maxlen=self._max or None))
        if self._max:
            turns.extend(messages)
        self._seen[session_id] = self._clock()

    def drop(self, session_id: str) -> bool:
        """Forget a session; True if it had any state."""
        self._seen.pop(session_id, None)
        return self._turns.pop(session_id, None) is not None

    def end(self, session_id: str) -> bool:
        """Forget a finished session and ignore later writes for it; True if it had history."""
        self._ended[session_id] = True
        return self.drop(session_id)

    def ended(self, session_id: str) -> bool:
        """Whether the session was ended (within the last ``ttl_seconds``)."""
        return session_id in self._ended

    def expire(self) -> list[str]:
        """Drop sessions idle longer than the TTL and return their ids."""
        cutoff = self._clock() - self._ttl
        stale = [sid for sid, seen in self._seen.items() if seen < cutoff]
        for sid in stale:
            self.drop(sid)
        self._ended.expire()
        return stale

    def __len__(self) -> int:
        return len(self._turns)
