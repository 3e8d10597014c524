"""The gateway's core: sessions, their connections and their engines, independent of HTTP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from .admission import LimitExceeded, Refusal, SessionLimits, session_refusal
from .config import GatewaySettings
from .engines import EngineRouter
from .frames import CLOSE_SESSION_ENDED, CLOSE_SESSION_EXPIRED
from .metrics import GatewayMetrics, count_states
from .ratelimit import KeyedLimiter, audio_rate_problem, message_rate_problem
from .relay import Ending, Relay
from .sessions import CapacityError, EndReason, Session, SessionStore, StoreUnavailable
from .startup import engine_state_of
from .tokens import hash_token, mint_token

log = logging.getLogger("tutor_gateway")

ENDINGS: dict[EndReason, Ending] = {
    "expired": Ending(CLOSE_SESSION_EXPIRED, "session expired", "Session expired"),
    "deleted": Ending(CLOSE_SESSION_ENDED, "session ended", "Session ended"),
}

# Cluster mode: may a new session of this tutor cause a cold start, beside these live ones?
ColdStartCheck = Callable[[int, list[Session]], Refusal | None]


class Connections:
    """The open client connections (relays) of each session, oldest first, so expiry,
    deletion and takeover can close them."""

    def __init__(self, per_session: int) -> None:
        self.per_session = per_session
        self._relays: dict[str, dict[Relay, None]] = {}

    def add(self, session_id: str, relay: Relay) -> list[Relay]:
        """Register a new connection; return the oldest ones it displaces past the limit."""
        relays = self._relays.setdefault(session_id, {})
        relays[relay] = None
        excess = len(relays) - self.per_session
        return list(relays)[:excess] if excess > 0 else []

    def remove(self, session_id: str, relay: Relay) -> None:
        relays = self._relays.get(session_id)
        if relays is not None:
            relays.pop(relay, None)
            if not relays:
                del self._relays[session_id]

    def terminate(self, session_id: str, ending: Ending) -> int:
        """End every connection of a session; return how many there were."""
        relays = list(self._relays.get(session_id, {}))
        for relay in relays:
            relay.terminate(ending)
        return len(relays)

    def __len__(self) -> int:
        return sum(len(r) for r in self._relays.values())


@dataclass
class Gateway:
    """Creates and ends sessions and keeps their connections and engines in step."""

    settings: GatewaySettings
    store: SessionStore
    router: EngineRouter
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    cold_starts: ColdStartCheck | None = None  # cluster mode (local mode queues starts)
    connections: Connections = field(init=False)
    message_rates: KeyedLimiter = field(init=False)  # MAX_MESSAGES_PER_SECOND, by session
    audio_rates: KeyedLimiter = field(init=False)  # MAX_AUDIO_BYTES_PER_SECOND, by session

    def __post_init__(self) -> None:
        self.connections = Connections(self.settings.max_connections_per_session)
        self.message_rates = KeyedLimiter(
            self.settings.max_messages_per_second, self.settings.max_messages_burst
        )
        self.audio_rates = KeyedLimiter(
            self.settings.max_audio_bytes_per_second, self.settings.max_audio_burst_bytes
        )
        self._admission = asyncio.Lock()  # count and create as one step on this gateway
        self.store.add_removal_listener(self._on_removed)

    async def create_session(
        self, tutor_id: int, student_id: int, kb_id: str | None
    ) -> tuple[Session, str]:
        """Mint a token and store the session with its hash; raise CapacityError when full,
        LimitExceeded past another admission limit (README, "Limits and abuse")."""
        token = mint_token()
        async with self._admission:
            self._admit(await self.store.list(), tutor_id, student_id)
            try:
                session = await self.store.create(tutor_id, student_id, kb_id, hash_token(token))
            except CapacityError:
                self.metrics.sessions_rejected.inc()
                self.metrics.limited.labels("max_sessions").inc()
                raise
        self.metrics.sessions_created.inc()
        log.info("session %s created (tutor %s)", session.session_id[:8], tutor_id)
        return session, token

    async def admit_message(self, session_id: str, audio_bytes: int | None = None) -> str | None:
        """Count one client WebSocket frame of the session (all its connections): a text
        frame as one message, a binary one (audio) by its ``audio_bytes``; why it is refused
        (the ``error`` text), else None."""
        s = self.settings
        if audio_bytes is not None:
            if await self.audio_rates.acquire(session_id, audio_bytes):
                return None
            self.metrics.limited.labels("max_audio_bytes_per_second").inc()
            return audio_rate_problem(s.max_audio_bytes_per_second, s.max_audio_burst_bytes)
        if await self.message_rates.acquire(session_id):
            return None
        self.metrics.limited.labels("max_messages_per_second").inc()
        return message_rate_problem(s.max_messages_per_second, s.max_messages_burst)

    def _admit(self, live: list[Session], tutor_id: int, student_id: int) -> None:
        """Raise for the first limit a new session would pass (CapacityError at MAX_SESSIONS)."""
        s = self.settings
        limits = SessionLimits(
            s.max_sessions,
            s.max_sessions_per_student,
            s.max_sessions_per_tutor or s.max_sessions,
            s.admission_retry_after_seconds,
        )
        refusal = session_refusal(live, tutor_id, student_id, limits)
        if refusal is None and self.cold_starts is not None:
            refusal = self.cold_starts(tutor_id, live)
        if refusal is None:
            return
        self.metrics.limited.labels(refusal.label).inc()
        log.info("session refused (tutor %s, student %s): %s", tutor_id, student_id, refusal.detail)
        if refusal.limit == "MAX_SESSIONS":
            self.metrics.sessions_rejected.inc()
            raise CapacityError(refusal.detail)
        raise LimitExceeded(refusal)

    async def count_sessions(self) -> None:
        """Count the stored sessions by tutor and state for ``tutor_gateway_sessions`` (at each
        scrape): ``active`` once the router has a ready engine for a session (locally the
        tutor's process answers ``/readyz``; in a cluster the TutorSession is Active), else
        ``pending``. A store that cannot be read leaves the last count."""
        try:
            sessions = await self.store.list()
        except StoreUnavailable as exc:
            log.warning("sessions not counted for /metrics: %s", exc)
            return
        states = []
        for session in sessions:
            state = engine_state_of(self.router, session)
            states.append((session.tutor_id, state is not None and state.ready))
        self.metrics.sessions.counts = count_states(states)

    async def _on_removed(self, session: Session, reason: EndReason) -> None:
        self.metrics.sessions_ended.labels(reason).inc()
        closed = self.connections.terminate(session.session_id, ENDINGS[reason])
        log.info("session %s %s (%d connections closed)", session.session_id[:8], reason, closed)
        await self.router.release(session)
