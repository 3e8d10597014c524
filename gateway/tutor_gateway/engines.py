"""Where a session's engine is: the router interface both modes implement, and what they share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx
from tutor_contract.crd import ENGINE_KEY_HEADER

from .sessions import Session


async def end_on_engine(
    http: httpx.AsyncClient, base_url: str, session_id: str, api_key: str
) -> str | None:
    """Ask the engine at ``base_url`` to end a session (its history deleted, a tombstone
    against late writes): None once it has (204), else what went wrong."""
    try:
        response = await http.delete(
            f"{base_url}/sessions/{session_id}", headers={ENGINE_KEY_HEADER: api_key}
        )
    except httpx.HTTPError as exc:
        return str(exc) or type(exc).__name__
    return None if response.status_code == 204 else f"HTTP {response.status_code}"


class EngineUnavailable(Exception):
    """The session's engine could not be started or reached in time."""


@dataclass(frozen=True)
class EngineEndpoint:
    """How to reach one engine: its HTTP base URL and the key it expects."""

    base_url: str
    api_key: str

    def websocket_url(
        self, session: Session, client_params: Mapping[str, str] | None = None
    ) -> str:
        """The engine's WebSocket URL for a session: the client's options (``stream``, …) pass
        through; the token stays here, and ``kb_id`` is the session's own."""
        params = {k: v for k, v in (client_params or {}).items() if k not in ("token", "kb_id")}
        if session.kb_id:
            params["kb_id"] = session.kb_id
        url = f"{self.base_url.replace('http', 'ws', 1)}/ws/{session.session_id}"
        return f"{url}?{httpx.QueryParams(params)}" if params else url


class EngineRouter(Protocol):
    """Finds (starting if needed) the engine serving a session."""

    async def endpoint(self, session: Session) -> EngineEndpoint: ...

    async def release(self, session: Session) -> None: ...

    def report_failure(self, session: Session, endpoint: EngineEndpoint) -> None: ...
