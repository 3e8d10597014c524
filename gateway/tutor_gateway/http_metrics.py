"""REST requests in the gateway's metrics: counted by route template, method and status, and
timed (``tutor_gateway_http_requests_total``, ``tutor_gateway_http_request_duration_seconds``).

The route is the template a request matched (``/v1/sessions/{session_id}``), never the path
itself, and ``other`` when no route matches, so the labels stay bounded however many paths
clients try. WebSocket connections have their own metrics (``tutor_gateway_connections``,
``tutor_gateway_ws_rejected_total``, the relay counters).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import METHODS, OTHER_ROUTE, GatewayMetrics
from .ratelimit import app_state

Routes = list[tuple[Any, str]]  # (something with ``matches(scope)``, its path template)


def flat_routes(app: Any) -> Routes:
    """The app's routes in the router's order with their full path templates: the routes of
    included routers one by one (FastAPI from 0.165 includes routers whole; older versions
    copy their routes in, prefixed)."""
    routes: Routes = []
    for route in getattr(getattr(app, "router", None), "routes", ()):
        contexts = getattr(route, "effective_route_contexts", None)
        for each in contexts() if contexts is not None else (route,):
            template = getattr(each, "path_format", None) or getattr(
                getattr(each, "starlette_route", None), "path_format", None
            )
            routes.append((each, str(template or OTHER_ROUTE)))
    return routes


def route_template(routes: Routes, scope: Scope) -> str:
    """The path template of the route ``scope`` matches, as the router picks it (a method
    mismatch still names it: 405), else ``other``."""
    partial = None
    for route, template in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return template
        if match == Match.PARTIAL and partial is None:
            partial = template
    return partial or OTHER_ROUTE


class RequestMetrics:
    """ASGI middleware, outermost: every HTTP answer counts, refusals of the access checks and
    rate limits included; the metrics are the running gateway's (``app.state.gateway``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: Routes | None = None  # read at the first request: all routes are in

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception escaped everything inside

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            metrics: GatewayMetrics | None = getattr(app_state(scope, "gateway"), "metrics", None)
            if metrics is not None:
                if self._routes is None:
                    self._routes = flat_routes(scope.get("app"))
                route = route_template(self._routes, scope)
                method = scope.get("method", "")
                method = method if method in METHODS else "other"
                metrics.http_requests.labels(route, method, str(status)).inc()
                metrics.http_duration.labels(route, method).observe(time.perf_counter() - started)
