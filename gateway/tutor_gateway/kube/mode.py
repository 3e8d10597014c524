"""Assembling the cluster mode: API client, watch-fed caches, store and router."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
from lightkube import AsyncClient, KubeConfig

from ..config import GatewaySettings
from ..service import Gateway
from .reflector import Reflector
from .resources import TutorSession
from .router import KubeEngineRouter
from .store import KubeSessionStore

log = logging.getLogger("tutor_gateway.kube")


def kube_config(settings: GatewaySettings) -> KubeConfig:
    """An explicit API server URL (tests, development), else in-cluster or kubeconfig."""
    if settings.kube_api_url:
        return KubeConfig.from_dict(
            {
                "clusters": [{"name": "api", "cluster": {"server": settings.kube_api_url}}],
                "users": [{"name": "anonymous", "user": {}}],
                "contexts": [
                    {
                        "name": "api",
                        "context": {
                            "cluster": "api",
                            "user": "anonymous",
                            "namespace": settings.kube_namespace or "default",
                        },
                    }
                ],
                "current-context": "api",
            }
        )
    return KubeConfig.from_env()


@contextlib.asynccontextmanager
async def cluster_mode(settings: GatewaySettings) -> AsyncIterator[Gateway]:
    """Sessions are TutorSession resources; engines are the pods the operator pins them to."""
    if not settings.engine_api_key:
        raise ValueError("ENGINE_API_KEY is required in kubernetes mode (the engines' secret)")
    config = kube_config(settings)
    client = AsyncClient(config, field_manager="tutor-gateway")
    namespace = settings.kube_namespace or client.namespace
    sessions = Reflector(client, TutorSession, namespace)
    store = KubeSessionStore(
        client,
        sessions,
        namespace,
        settings.max_sessions,
        settings.session_timeout_seconds,
        settings.activity_patch_interval_seconds,
    )
    http = httpx.AsyncClient(timeout=5.0)
    gateway = Gateway(settings, store, KubeEngineRouter(sessions, settings.engine_api_key, http))
    watcher = asyncio.create_task(sessions.run())
    try:
        await asyncio.wait_for(sessions.synced.wait(), settings.engine_start_timeout_seconds)
        log.info("watching TutorSessions in namespace %s", namespace)
        yield gateway
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await http.aclose()
        await client.close()
