"""Routing a session to the engine pod the operator pinned it to."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
from tutor_contract.crd import ENGINE_KEY_HEADER, FAILED

from ..engines import EngineEndpoint, EngineUnavailable
from ..sessions import Session
from .reflector import Reflector
from .resources import endpoint_of, waiting_reason

log = logging.getLogger("tutor_gateway.kube")


class KubeEngineRouter:
    """Waits (bounded by the caller) until the session is Active, then returns its pod."""

    def __init__(self, sessions: Reflector, api_key: str, http: httpx.AsyncClient) -> None:
        self.sessions = sessions
        self.api_key = api_key
        self.http = http

    def _endpoint(self, session_id: str) -> str | None:
        obj = self.sessions.objects.get(session_id)
        return None if obj is None else endpoint_of(obj)

    async def endpoint(self, session: Session) -> EngineEndpoint:
        sid = session.session_id
        while self._endpoint(sid) is None:
            if sid not in self.sessions.objects and self.sessions.synced.is_set():
                raise EngineUnavailable("the session no longer exists")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self.sessions.wait_for(
                        lambda: self._endpoint(sid) is not None or sid not in self.sessions.objects
                    )
            obj = self.sessions.objects.get(sid)
            if obj is not None and (obj.get("status") or {}).get("phase") == FAILED:
                raise EngineUnavailable(waiting_reason(obj))
        return EngineEndpoint(str(self._endpoint(sid)), self.api_key)

    async def release(self, session: Session) -> None:
        """Best effort: tell the pinned engine to drop the session's history."""
        obj = self.sessions.objects.get(session.session_id)
        base = ((obj or {}).get("status") or {}).get("endpoint")
        if not base:
            return
        with contextlib.suppress(httpx.HTTPError):
            await self.http.delete(
                f"{base}/sessions/{session.session_id}", headers={ENGINE_KEY_HEADER: self.api_key}
            )

    def report_failure(self, session: Session, endpoint: EngineEndpoint) -> None:
        """The operator re-pins sessions whose pod is gone; nothing to do here but say so."""
        log.warning("session %s: engine %s unreachable", session.session_id[:8], endpoint.base_url)
