"""The conversation WebSocket: ``/ws/ws/{session_id}`` (unified) and ``/ws/{session_id}`` (split).

The gateway authenticates the session's token, then relays frames to the tutor's engine.
"""

from __future__ import annotations

import contextlib
import logging

from fastapi import WebSocket, WebSocketDisconnect
from starlette.routing import Match, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from tutor_contract import logs

from ..auth import select_subprotocol, websocket_token
from ..frames import (
    CLOSE_REPLACED,
    CLOSE_SESSION_ENDED,
    CLOSE_SESSION_EXPIRED,
    CLOSE_SESSION_NOT_FOUND,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHORIZED,
    error_frame,
)
from ..relay import Ending, Relay, RelayLimits
from ..service import Gateway
from ..sessions import Session, StoreUnavailable
from ..tokens import token_matches
from .deps import get_gateway

log = logging.getLogger("tutor_gateway.ws")

REFUSALS = {
    "expired": (CLOSE_SESSION_EXPIRED, "Session expired"),
    "deleted": (CLOSE_SESSION_ENDED, "Session ended"),
    None: (CLOSE_SESSION_NOT_FOUND, "Session not found"),
}
STORE_UNAVAILABLE = "The session store is unavailable; reconnect in a moment"
REPLACED = Ending(
    CLOSE_REPLACED,
    "replaced by a newer connection",
    "This session was opened on a newer connection; this one is closed",
)


async def _refuse(websocket: WebSocket, code: int, message: str) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await websocket.send_json(error_frame(message))
        await websocket.close(code, message)


async def _admitted(
    websocket: WebSocket, gateway: Gateway, session_id: str, token: str | None
) -> Session | None:
    """The session, touched, if it exists and ``token`` is its; else refuse the socket."""
    session = await gateway.store.get(session_id)
    if session is None:
        reason = gateway.store.ended_reason(session_id)
        gateway.metrics.ws_rejected.labels(reason or "not_found").inc()
        await _refuse(websocket, *REFUSALS[reason])
        return None
    if not token_matches(token, session.token_hash):
        gateway.metrics.ws_rejected.labels("unauthorized").inc()
        await _refuse(websocket, CLOSE_UNAUTHORIZED, "Invalid or missing token")
        return None
    await gateway.store.touch(session_id)
    return session


async def conversation(websocket: WebSocket) -> None:
    """Authenticate, then relay this connection to the session's engine until it ends.

    A plain Starlette route: FastAPI's dependency injection would hold exit stacks and
    solved dependencies for the connection's whole life (~5 KiB of an idle connection).
    """
    session_id: str = websocket.path_params["session_id"]
    gateway = get_gateway(websocket)
    # Every line logged for this connection (its task and the tasks it starts) names the
    # session; the task, and with it the binding, ends with the connection.
    logs.bind(session=session_id)
    offered = websocket.scope.get("subprotocols", ())  # ``tutor.v1``, maybe ``token.<token>``
    token = websocket_token(offered, websocket.query_params.get("token"))  # its engine_token
    await websocket.accept(subprotocol=select_subprotocol(offered))  # never the token
    try:
        session = await _admitted(websocket, gateway, session_id, token)
    except StoreUnavailable as exc:
        log.warning("WebSocket refused: %s", exc)
        gateway.metrics.ws_rejected.labels("store_unavailable").inc()
        await _refuse(websocket, CLOSE_TRY_AGAIN_LATER, STORE_UNAVAILABLE)
        return
    if session is None:
        return
    logs.bind(tutor_id=session.tutor_id)
    settings = gateway.settings
    limits = RelayLimits(
        max_message_bytes=settings.max_message_bytes,
        max_queued_bytes=settings.max_queued_bytes,
        engine_wait_seconds=settings.engine_start_timeout_seconds,
        engine_connect_timeout_seconds=settings.engine_connect_timeout_seconds,
        send_timeout_seconds=settings.client_send_timeout_seconds,
        activity_interval_seconds=min(1.0, settings.session_timeout_seconds / 8),
        engine_release_seconds=settings.engine_idle_release_seconds,
    )
    relay = Relay(
        websocket,
        session,
        gateway.router,
        limits,
        lambda: gateway.store.touch(session_id),
        metrics=gateway.metrics,
        admit_message=lambda audio_bytes: gateway.admit_message(session_id, audio_bytes),
    )
    for displaced in gateway.connections.add(session_id, relay):
        gateway.metrics.ws_rejected.labels("replaced").inc()
        displaced.terminate(REPLACED)
    try:
        await relay.run()
    finally:
        gateway.connections.remove(session_id, relay)


PATHS = ("/ws/ws/{session_id}", "/ws/{session_id}")  # unified, split
ROUTES = [WebSocketRoute(path, conversation) for path in PATHS]


class ConversationRoutes:
    """ASGI middleware: the conversation WebSockets go straight to their route, past the
    middleware inside it (HTTP-only: rate limit, body limit) and the router, each of which
    would keep a suspended frame for the connection's whole life (~6 KiB an idle one)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            for route in ROUTES:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await route.handle(scope, receive, send)
                    return
        await self.app(scope, receive, send)
