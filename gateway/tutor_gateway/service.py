"""The gateway's core: sessions, their connections and their engines, independent of HTTP."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from .config import GatewaySettings
from .connections import Connections
from .engines import EngineRouter, LocalEngines
from .frames import CLOSE_SESSION_ENDED, CLOSE_SESSION_EXPIRED
from .metrics import GatewayMetrics
from .policy import expired_sessions
from .relay import Ending
from .sessions import CapacityError, EndReason, Session, SessionStore
from .tokens import hash_token, mint_token

log = logging.getLogger("tutor_gateway")

ENDINGS: dict[EndReason, Ending] = {
    "expired": Ending(CLOSE_SESSION_EXPIRED, "session expired", "Session expired"),
    "deleted": Ending(CLOSE_SESSION_ENDED, "session ended", "Session ended"),
}

__all__ = ["CapacityError", "Gateway"]


@dataclass
class Gateway:
    """Creates and ends sessions and keeps their connections and engines in step."""

    settings: GatewaySettings
    store: SessionStore
    router: EngineRouter
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    connections: Connections = field(init=False)

    def __post_init__(self) -> None:
        self.connections = Connections(self.settings.max_connections_per_session)
        self.store.add_removal_listener(self._on_removed)

    async def create_session(
        self, tutor_id: int, student_id: int, kb_id: str | None
    ) -> tuple[Session, str]:
        """Mint a token and store the session with its hash; raise CapacityError when full."""
        token = mint_token()
        try:
            session = await self.store.create(tutor_id, student_id, kb_id, hash_token(token))
        except CapacityError:
            self.metrics.sessions_rejected.inc()
            raise
        self.metrics.sessions_created.inc()
        log.info("session %s created (tutor %s)", session.session_id[:8], tutor_id)
        return session, token

    async def _on_removed(self, session: Session, reason: EndReason) -> None:
        self.metrics.sessions_ended.labels(reason).inc()
        closed = self.connections.terminate(session.session_id, ENDINGS[reason])
        log.info("session %s %s (%d connections closed)", session.session_id[:8], reason, closed)
        await self.router.release(session)


@dataclass
class LocalHousekeeping:
    """Local mode's timers: expire idle sessions, stop engines with no sessions."""

    store: SessionStore
    engines: LocalEngines
    settings: GatewaySettings

    async def sweep(self, now: float | None = None) -> None:
        """One pass: expire sessions past SESSION_TIMEOUT_SECONDS (their engines told at once,
        each within a bound), then stop idle engines."""
        sessions = await self.store.list()
        now = time.time() if now is None else now
        activity = {s.session_id: s.last_activity for s in sessions}
        expired = expired_sessions(activity, now, self.settings.session_timeout_seconds)
        ending = [self.store.delete(sid, reason="expired") for sid in expired]
        for result in await asyncio.gather(*ending, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result  # once every other one has finished
        busy = {s.tutor_id for s in await self.store.list()}
        await self.engines.stop_idle(busy)

    async def run(self) -> None:
        """Sweep forever at the configured interval (cancelled at shutdown)."""
        interval = min(
            self.settings.reaper_interval_seconds, self.settings.session_timeout_seconds / 4
        )
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("housekeeping pass failed")
