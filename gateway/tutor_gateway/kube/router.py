"""Routing a session to an engine pod: the one the operator pinned it to, or, once that one
failed the session, any other ready pod of its tutor (pinning spreads load; it is not where the
conversation lives)."""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable, Collection, Sequence

import httpx
from cachetools import TTLCache
from tenacity import wait_exponential
from tutor_contract.crd import FAILED
from tutor_contract.tasks import cancel_and_wait

from ..engines import EngineEndpoint, EngineUnavailable, end_on_engine
from ..retry import Backoff
from ..sessions import Session
from ..startup import EngineState, cluster_engine_state
from .reflector import Reflector
from .resources import endpoint_of, engine_name, not_routable_reason, ready_endpoints

log = logging.getLogger("tutor_gateway.kube")

# How long a session avoids an endpoint that failed it (the operator re-pins it meanwhile).
FAILURE_MEMORY_SECONDS = 60.0
WAIT_SLICE_SECONDS = 5.0  # re-check at least this often while waiting for a routable pod
# How long a deleted session's release is tried while no engine of its tutor answers.
RELEASE_DEADLINE_SECONDS = 600.0


def release_candidates(pinned: str | None, ready: Sequence[str]) -> list[str]:
    """The engines to ask to end a session, in order: its pinned pod, then the other ready
    pods of its tutor."""
    return list(dict.fromkeys([*([pinned] if pinned else []), *ready]))


def choose_endpoint(
    pinned: str | None, ready: Sequence[str], failed: Collection[str], session_id: str
) -> str | None:
    """Where to send a session: its pinned endpoint unless that one failed it; then another
    ready endpoint of the tutor (the same one for the same session, spread over sessions);
    with none, the pinned one again (a restarting pod may come back). ``None``: wait."""
    if not failed or (pinned is not None and pinned not in failed):
        return pinned
    others = [url for url in ready if url not in failed]
    if others:
        return others[zlib.crc32(session_id.encode()) % len(others)]
    return pinned


class KubeEngineRouter:
    """Waits (bounded by the caller) until the session has a routable pod, then returns it."""

    def __init__(
        self, sessions: Reflector, engines: Reflector, api_key: str, http: httpx.AsyncClient
    ) -> None:
        self.sessions = sessions
        self.engines = engines  # TutorEngines, for their ready pods
        self.api_key = api_key
        self.http = http
        # Session id → endpoints that failed it lately.
        self._failed: TTLCache[str, frozenset[str]] = TTLCache(100_000, FAILURE_MEMORY_SECONDS)
        self._releasing: set[asyncio.Task[None]] = set()

    def _choice(self, session: Session) -> str | None:
        obj = self.sessions.objects.get(session.session_id)
        pinned = None if obj is None else endpoint_of(obj)
        engine = self.engines.objects.get(engine_name(session.tutor_id))
        failed = self._failed.get(session.session_id, frozenset())
        return choose_endpoint(pinned, ready_endpoints(engine), failed, session.session_id)

    async def endpoint(self, session: Session) -> EngineEndpoint:
        sid = session.session_id
        while (chosen := self._choice(session)) is None:
            if sid not in self.sessions.objects and self.sessions.synced.is_set():
                raise EngineUnavailable("the session no longer exists")
            await self._wait(
                lambda: self._choice(session) is not None or sid not in self.sessions.objects
            )
            obj = self.sessions.objects.get(sid)
            if obj is not None and (obj.get("status") or {}).get("phase") == FAILED:
                raise EngineUnavailable(not_routable_reason(obj))
        return EngineEndpoint(chosen, self.api_key)

    def engine_state(self, session: Session) -> EngineState:
        """The session's engine as its TutorSession says: phase and Ready condition."""
        return cluster_engine_state(self.sessions.objects.get(session.session_id))

    async def _wait(self, predicate: Callable[[], bool]) -> None:
        """Until ``predicate`` holds after a change of sessions or engines, or a while passed."""
        waits = [asyncio.create_task(r.wait_for(predicate)) for r in (self.sessions, self.engines)]
        try:
            await asyncio.wait(
                waits, timeout=WAIT_SLICE_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            await cancel_and_wait(waits)

    async def release(self, session: Session) -> None:
        """Have an engine of the tutor end the deleted or expired session (history deleted,
        a tombstone against late writes), in the background: any engine can, as the store is
        shared, so the pinned pod is asked first, then the tutor's other ready pods; while
        none answers (the session was Pending, its pod is gone) it tries again for
        ``RELEASE_DEADLINE_SECONDS``. The history's TTL covers what even that misses."""
        obj = self.sessions.objects.get(session.session_id)
        pinned = None if obj is None else endpoint_of(obj)
        task = asyncio.create_task(self._release(session, pinned))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, session: Session, pinned: str | None) -> None:
        sid = session.session_id
        deadline = asyncio.get_running_loop().time() + RELEASE_DEADLINE_SECONDS
        backoff = Backoff(wait_exponential(multiplier=0.5, max=10.0))
        while True:
            engine = self.engines.objects.get(engine_name(session.tutor_id))
            for base in release_candidates(pinned, ready_endpoints(engine)):
                if await end_on_engine(self.http, base, sid, self.api_key) is None:
                    return
            delay = backoff.next()
            if asyncio.get_running_loop().time() + delay > deadline:
                log.warning(
                    "session %s: no engine ended it within %.0fs; its history expires with its TTL",
                    sid[:8],
                    RELEASE_DEADLINE_SECONDS,
                )
                return
            await asyncio.sleep(delay)

    async def close(self) -> None:
        """Stop releases still trying (at shutdown)."""
        await cancel_and_wait(list(self._releasing))

    def report_failure(self, session: Session, endpoint: EngineEndpoint) -> None:
        """Avoid this endpoint for the session a while: another ready pod serves it meanwhile."""
        sid = session.session_id
        self._failed[sid] = self._failed.get(sid, frozenset()) | {endpoint.base_url}
        log.debug("session %s: avoiding %s for a while", sid[:8], endpoint.base_url)
