"""The conversation WebSockets' fast path (tutor_gateway.api.ws.ConversationRoutes): the two
conversation paths go straight to their route, everything else to the app inside."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from tutor_gateway.api import ws

pytestmark = pytest.mark.unit


def scope(kind: str, path: str) -> dict[str, Any]:
    return {"type": kind, "path": path, "root_path": "", "headers": [], "query_string": b""}


async def nothing() -> dict[str, Any]:
    return {"type": "websocket.disconnect"}


async def dropped(_: Any) -> None:
    return None


@pytest.fixture
def dispatched(monkeypatch: pytest.MonkeyPatch) -> tuple[ws.ConversationRoutes, list[Any]]:
    seen: list[Any] = []

    async def conversation(websocket: WebSocket) -> None:
        seen.append(("conversation", websocket.path_params["session_id"]))

    async def inner(scope: dict[str, Any], *_: Any) -> None:
        seen.append(("app", scope["type"], scope["path"]))

    routes = [WebSocketRoute(path, conversation) for path in ws.PATHS]
    monkeypatch.setattr(ws, "ROUTES", routes)
    return ws.ConversationRoutes(inner), seen


@pytest.mark.parametrize(("path", "session"), [("/ws/ws/abc", "abc"), ("/ws/f3c1-9", "f3c1-9")])
async def test_conversation_paths_go_to_the_conversation(
    dispatched: Any, path: str, session: str
) -> None:
    app, seen = dispatched
    await app(scope("websocket", path), nothing, dropped)
    assert seen == [("conversation", session)]


@pytest.mark.parametrize(
    ("kind", "path"),
    [("websocket", "/ws"), ("websocket", "/ws/a/b"), ("websocket", "/other"), ("http", "/ws/abc")],
)
async def test_anything_else_goes_to_the_app(dispatched: Any, kind: str, path: str) -> None:
    app, seen = dispatched
    await app(scope(kind, path), nothing, dropped)
    assert seen == [("app", kind, path)]
