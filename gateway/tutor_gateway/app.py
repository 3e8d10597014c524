"""Builds the gateway app: routes, and the session store and engine router of the mode."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from tutor_contract import tracing

from . import auth
from .api import demo, docs, errors, health, responses, sessions, ws
from .config import GatewaySettings
from .http_metrics import RequestMetrics
from .local.mode import local_mode
from .ratelimit import RequestRateLimit
from .sessions import StoreUnavailable

log = logging.getLogger("tutor_gateway")


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """The gateway ASGI app; its mode's resources live in the lifespan."""
    settings = settings or GatewaySettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.gateway_mode == "kubernetes":
            from .kube.mode import cluster_mode as mode  # only when chosen: needs the kube extra
        else:
            mode = local_mode
        async with mode(settings) as gateway:
            app.state.gateway = gateway
            log.info(
                "gateway ready (%s mode, max %d sessions)",
                settings.gateway_mode,
                settings.max_sessions,
            )
            yield

    app = FastAPI(
        title="tutor-serving gateway",
        description=docs.DESCRIPTION,
        version=docs.VERSION,
        openapi_tags=docs.TAGS,
        generate_unique_id_function=docs.operation_id,
        docs_url=None,  # /docs and /redoc come from api.docs, with assets served here (no CDN)
        redoc_url=None,
        lifespan=lifespan,
        **tracing.fastapi_options(),
    )
    app.state.settings = settings

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("%s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=503)

    app.add_exception_handler(RequestValidationError, errors.validation_error)  # type: ignore[arg-type]
    app.add_middleware(errors.BodyLimit, limit=settings.max_request_body_bytes)
    app.add_middleware(RequestRateLimit, per_minute=settings.max_requests_per_minute)
    app.add_middleware(ws.ConversationRoutes)  # after the access check, before the rest
    auth.install(app, settings)  # keys and Origin before any body is read
    app.add_middleware(RequestMetrics)  # outermost: every answer counts, refusals included

    for prefix in ("/v1", "/mgmt/v1"):
        versioned = APIRouter(
            prefix=prefix, dependencies=[auth.ManagementKey], responses=responses.MANAGEMENT
        )
        versioned.include_router(sessions.router)
        # One documented operation each: /mgmt/v1 is an alias (the OpenAPI description says so).
        app.include_router(versioned, include_in_schema=prefix == "/v1")
    app.include_router(health.router)
    app.include_router(demo.router(settings.demo_enabled))
    docs.install(app)
    return app
