"""Assembling the cluster mode: API client, watch-fed caches, store and router."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
import httpx2
from lightkube import AsyncClient, KubeConfig
from lightkube.config.client_adapter import AsyncClient as AdapterClient
from lightkube.config.client_adapter import ConnectionParams
from lightkube.config.models import Cluster, User
from tutor_contract.tasks import cancel_and_wait

from ..config import GatewaySettings
from ..service import Gateway
from .admission import cluster_cold_starts
from .reflector import Reflector, WatchSettings
from .resources import TutorEngine, TutorSession
from .router import KubeEngineRouter
from .store import KubeSessionStore

log = logging.getLogger("tutor_gateway.kube")


def kube_config(settings: GatewaySettings) -> KubeConfig:
    """An explicit API server URL (tests, development), else in-cluster or kubeconfig."""
    if settings.kube_api_url:
        return KubeConfig.from_one(
            cluster=Cluster(server=settings.kube_api_url),
            user=User(token=settings.kube_api_token or None),
            namespace=settings.kube_namespace or "default",
        )
    return KubeConfig.from_env()


def watch_settings(settings: GatewaySettings) -> WatchSettings:
    """The reflector's timeouts and back-off from the gateway's KUBE_* settings."""
    return WatchSettings(
        request_timeout=settings.kube_api_timeout_seconds,
        watch_timeout=settings.kube_watch_timeout_seconds,
        stale_seconds=settings.kube_watch_stale_seconds or settings.kube_watch_timeout_seconds + 15,
        retry_initial=settings.kube_retry_initial_seconds,
        retry_max=settings.kube_retry_max_seconds,
    )


@contextlib.asynccontextmanager
async def cluster_mode(settings: GatewaySettings) -> AsyncIterator[Gateway]:
    """Sessions are TutorSession resources; engines are the pods the operator pins them to,
    or other ready pods of their TutorEngine once the pinned one failed them."""
    if not settings.engine_api_key:
        raise ValueError("ENGINE_API_KEY is required in kubernetes mode (the engines' secret)")
    config = kube_config(settings)
    timeout = httpx2.Timeout(settings.kube_api_timeout_seconds)
    client = AsyncClient(config, field_manager="tutor-gateway", timeout=timeout)
    # The reflector's own HTTP client: the same server, credentials and TLS as ``client``.
    watch_http = AdapterClient(client.config, ConnectionParams(timeout=timeout))
    namespace = settings.kube_namespace or client.namespace
    sessions = Reflector(watch_http, TutorSession, namespace, watch_settings(settings))
    engines = Reflector(watch_http, TutorEngine, namespace, watch_settings(settings))
    store = KubeSessionStore(
        client,
        sessions,
        namespace,
        settings.max_sessions,
        settings.session_timeout_seconds,
        settings.activity_patch_interval_seconds,
    )
    http = httpx.AsyncClient(timeout=5.0)
    router = KubeEngineRouter(sessions, engines, settings.engine_api_key, http)
    cold_starts = cluster_cold_starts(
        engines, settings.max_concurrent_cold_starts, settings.admission_retry_after_seconds
    )
    gateway = Gateway(settings, store, router, cold_starts=cold_starts)
    # Sessions must be listed before serving; engines only widen the choice after a failure.
    watchers = [asyncio.create_task(sessions.run()), asyncio.create_task(engines.run())]
    try:
        await asyncio.wait_for(sessions.synced.wait(), settings.engine_start_timeout_seconds)
        log.info("watching TutorSessions in namespace %s", namespace)
        yield gateway
    finally:
        await cancel_and_wait(watchers)
        await router.close()
        await http.aclose()
        await watch_http.aclose()
        await client.close()
