"""Builds the gateway app: routes, and the session store and engine router of the mode."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from tutor_contract import tracing

from . import auth
from .api import demo, docs, errors, health, responses, sessions, ws
from .config import GatewaySettings
from .engine_registry import EngineRegistry
from .engines import LocalEngines
from .http_metrics import RequestMetrics
from .ratelimit import RequestRateLimit
from .service import Gateway, LocalHousekeeping
from .sessions import SqliteSessionStore, StoreUnavailable

log = logging.getLogger("tutor_gateway")


@contextlib.asynccontextmanager
async def _local_mode(settings: GatewaySettings) -> AsyncIterator[Gateway]:
    """Sessions in STATE_DIR/sessions.db and one engine process per tutor on this machine."""
    store = await SqliteSessionStore.open(
        settings.session_db_path(),
        settings.max_sessions,
        activity_interval=min(
            settings.activity_patch_interval_seconds, settings.session_timeout_seconds / 4
        ),
    )
    try:
        registry = EngineRegistry(settings.state_dir)
        await asyncio.to_thread(registry.stop_stale)  # engines a dead gateway of this dir left
        engines = LocalEngines(
            api_key=settings.engine_api_key or secrets.token_urlsafe(32),
            start_timeout=settings.engine_start_timeout_seconds,
            idle_timeout=settings.engine_idle_timeout_seconds,
            command=settings.engine_command,
            liveness_timeout=settings.engine_liveness_timeout_seconds,
            max_concurrent_starts=settings.max_concurrent_cold_starts,
            registry=registry,
            engine_env=settings.local_engine_env(),
        )
        gateway = Gateway(settings, store, engines)
        timers = LocalHousekeeping(store, engines, settings)
        await timers.sweep()  # sessions that expired while no gateway ran
        housekeeping = asyncio.create_task(timers.run())
        try:
            yield gateway
        finally:
            housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await housekeeping
            await engines.close()
    finally:
        await store.close()


def cluster_mode(settings: GatewaySettings) -> contextlib.AbstractAsyncContextManager[Gateway]:
    """The cluster mode, imported only when chosen (it needs the ``kube`` extra)."""
    from .kube.mode import cluster_mode as mode

    return mode(settings)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """The gateway ASGI app; its mode's resources live in the lifespan."""
    settings = settings or GatewaySettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        mode = cluster_mode if settings.gateway_mode == "kubernetes" else _local_mode
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
    app.include_router(ws.router)
    app.include_router(demo.router(settings.demo_enabled))
    docs.install(app)
    return app
