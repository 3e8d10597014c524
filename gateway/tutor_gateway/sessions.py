"""Sessions: the record, the store interface, and the in-memory store of the local mode."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from cachetools import TTLCache

from .policy import has_capacity

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
    """The session store (the Kubernetes API, in cluster mode) could not be reached."""


class SessionStore(Protocol):
    """Where sessions live: memory in local mode, TutorSession resources in a cluster."""

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


class MemorySessionStore:
    """Sessions in this process's memory (the embedded default; one gateway replica)."""

    def __init__(
        self,
        max_sessions: int,
        clock: Callable[[], float] = time.time,
        tombstones: int = 10_000,
        tombstone_ttl: float = 24 * 3600,
    ) -> None:
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._ended: TTLCache[str, EndReason] = TTLCache(tombstones, tombstone_ttl)
        self._listeners: list[RemovalListener] = []

    async def create(
        self, tutor_id: int, student_id: int, kb_id: str | None, token_hash: str
    ) -> Session:
        if not has_capacity(len(self._sessions), self.max_sessions):
            raise CapacityError(f"Maximum number of sessions reached ({self.max_sessions})")
        now = self._clock()
        session = Session(
            session_id=str(uuid.uuid4()),
            tutor_id=tutor_id,
            student_id=student_id,
            kb_id=kb_id,
            token_hash=token_hash,
            status="active",
            created_at=now,
            last_activity=now,
        )
        self._sessions[session.session_id] = session
        return session

    async def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    async def list(self) -> list[Session]:
        return sorted(self._sessions.values(), key=lambda s: s.created_at)

    async def count(self) -> int:
        return len(self._sessions)

    async def delete(self, session_id: str, reason: EndReason = "deleted") -> Session | None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return None
        self._ended[session_id] = reason
        for listener in self._listeners:
            await listener(session, reason)
        return session

    async def touch(self, session_id: str) -> None:
        session = self._sessions.get(session_id)
        if session is not None:
            self._sessions[session_id] = replace(session, last_activity=self._clock())

    def ended_reason(self, session_id: str) -> EndReason | None:
        return self._ended.get(session_id)

    def add_removal_listener(self, listener: RemovalListener) -> None:
        self._listeners.append(listener)
