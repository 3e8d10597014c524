"""Health, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..schemas import Health
from .deps import GatewayDep
from .responses import HEALTH

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses=HEALTH)
async def health(gateway: GatewayDep) -> Health:
    """The seed's health check."""
    return Health(
        status="healthy",
        service="GPU Server Management API",
        active_sessions=await gateway.store.count(),
        max_sessions=gateway.settings.max_sessions,
    )


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(gateway: GatewayDep) -> dict[str, str]:
    """Readiness: the session store answers."""
    await gateway.store.count()
    return {"status": "ready"}


@router.get("/metrics", include_in_schema=False)
async def metrics(gateway: GatewayDep) -> Response:
    """Prometheus text format."""
    gateway.metrics.connections.set(len(gateway.connections))
    await gateway.count_sessions()
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
