"""Sessions: the record, the store interface, and what both stores share (tombstones, listeners)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from cachetools import TTLCache

EndReason = Literal["deleted", "expired"]
RemovalListener = Callable[["Session", EndReason], Awaitable[None]]


@dataclass(frozen=True)
class Session:
    """One student's conversation with one tutor. Holds the token's hash, never the token."""

    session_id: str
    tutor_id: int
    student_id: int
    kb_id: str | None
    token_hash: str
    status: str
    created_at: float
    last_activity: float


class CapacityError(Exception):
    """Raised when a new session would exceed MAX_SESSIONS."""


class StoreUnavailable(Exception):
    """The session store (the Kubernetes API, or the local database) could not be used."""


class SessionStore(Protocol):
    """Where sessions live: a SQLite file in local mode, TutorSession resources in a cluster."""

    async def create(
        self, tutor_id: int, student_id: int, kb_id: str | None, token_hash: str
    ) -> Session: ...

    async def get(self, session_id: str) -> Session | None: ...

    async def list(self) -> list[Session]: ...

    async def count(self) -> int: ...

    async def delete(self, session_id: str, reason: EndReason = "deleted") -> Session | None: ...

    async def touch(self, session_id: str) -> None: ...

    def ended_reason(self, session_id: str) -> EndReason | None: ...

    def add_removal_listener(self, listener: RemovalListener) -> None: ...


TOMBSTONES = 10_000  # recent endings remembered, at most
TOMBSTONE_TTL_SECONDS = 24 * 3600  # and for how long


class Endings:
    """Both stores' record of endings: why each recent session ended (a tombstone, kept
    ``tombstone_ttl`` seconds by ``timer``) and the removal listeners told of each."""

    def __init__(
        self,
        tombstones: int = TOMBSTONES,
        tombstone_ttl: float = TOMBSTONE_TTL_SECONDS,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tombstone_ttl = tombstone_ttl
        self._ended: TTLCache[str, EndReason] = TTLCache(tombstones, tombstone_ttl, timer=timer)
        self._listeners: list[RemovalListener] = []

    async def _removed(self, session: Session, reason: EndReason) -> None:
        """Record the session's ending and tell every listener, in order."""
        self._ended[session.session_id] = reason
        for listener in self._listeners:
            await listener(session, reason)

    def ended_reason(self, session_id: str) -> EndReason | None:
        return self._ended.get(session_id)

    def add_removal_listener(self, listener: RemovalListener) -> None:
        self._listeners.append(listener)
