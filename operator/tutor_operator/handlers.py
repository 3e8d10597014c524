"""The kopf handlers: they register, read their arguments and delegate to ``reconcile``."""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any

import kopf

from . import GROUP, VERSION
from .decisions import pod_view, session_view
from .names import (
    ENGINE_PLURAL,
    FINALIZER,
    LABEL_ENGINE,
    LABEL_MANAGED_BY,
    LABEL_TUTOR_ID,
    MANAGER,
    SESSION_PLURAL,
    engine_name,
)
from .reconcile import Context, Indices, ensure_engine, reconcile_engine, report_session_error

ENGINES = (GROUP, VERSION, ENGINE_PLURAL)
SESSIONS = (GROUP, VERSION, SESSION_PLURAL)
OWNED = {LABEL_ENGINE: kopf.PRESENT, LABEL_MANAGED_BY: MANAGER}


def _indices(kwargs: dict[str, Any]) -> Indices:
    return Indices(
        sessions=kwargs["session_index"],
        pods=kwargs["pod_index"],
        deployments=kwargs["deployment_index"],
        services=kwargs["service_index"],
    )


def register(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    """Register every handler of the operator in ``registry``, bound to ``ctx``."""
    settings = ctx.settings

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING
        settings.scanning.disabled = True
        # A timer may delete its own engine: let it finish its call instead of re-checking
        # a minute later (kopf's default), which would hold the finalizer that long.
        settings.background.instant_exit_timeout = 2.0
        settings.background.cancellation_polling = 1.0

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if settings.api_server:
            return kopf.ConnectionInfo(server=settings.api_server, insecure=True)
        return kopf.login_via_client(**kwargs)

    @kopf.on.cleanup(registry=registry)
    def cleanup(**_: Any) -> None:
        ctx.api.close()

    # Indices, all keyed by (namespace, engine name).
    @kopf.index(*SESSIONS, registry=registry, id="session_index")
    async def index_session(namespace: str, spec: Any, body: Any, **_: Any) -> Any:
        tutor_id = spec.get("tutorId")
        if not isinstance(tutor_id, int) or tutor_id < 0:
            return None
        return {(namespace, engine_name(tutor_id)): session_view(body)}

    @kopf.index("v1", "pods", registry=registry, id="pod_index", labels=OWNED)
    async def index_pod(namespace: str, labels: Any, body: Any, **_: Any) -> Any:
        return {(namespace, labels[LABEL_ENGINE]): pod_view(body)}

    @kopf.index("apps", "v1", "deployments", registry=registry, id="deployment_index", labels=OWNED)
    async def index_deployment(namespace: str, name: str, spec: Any, **_: Any) -> Any:
        return {(namespace, name): spec.get("replicas", 1)}

    @kopf.index("v1", "services", registry=registry, id="service_index", labels=OWNED)
    async def index_service(namespace: str, name: str, **_: Any) -> Any:
        return {(namespace, name): name}

    @kopf.index(*ENGINES, registry=registry, id="engine_index")
    async def index_engine(namespace: str, name: str, body: Any, **_: Any) -> Any:
        return {(namespace, name): copy.deepcopy(dict(body))}

    # Sessions: make sure their engine exists, then let it place them right away.
    @kopf.on.resume(*SESSIONS, registry=registry, id="session")
    @kopf.on.create(*SESSIONS, registry=registry, id="session")
    async def session_seen(
        namespace: str, name: str, spec: Any, labels: Any, patch: kopf.Patch, **kwargs: Any
    ) -> None:
        tutor_id = spec["tutorId"]
        if labels.get(LABEL_TUTOR_ID) != str(tutor_id):
            patch.metadata.labels[LABEL_TUTOR_ID] = str(tutor_id)
        engines = kwargs["engine_index"]
        try:
            await ensure_engine(ctx, namespace, tutor_id, engines)
            for engine in engines.get((namespace, engine_name(tutor_id)), ()):
                with contextlib.suppress(kopf.PermanentError):  # the engine's handlers report it
                    await reconcile_engine(ctx, engine, _indices(kwargs))
        except kopf.TemporaryError as exc:
            await report_session_error(ctx, namespace, name, str(exc))
            raise

    # Engines: children on creation, spec change and restart; the timer does the rest.
    @kopf.on.resume(*ENGINES, registry=registry, id="engine")
    @kopf.on.create(*ENGINES, registry=registry, id="engine")
    @kopf.on.update(*ENGINES, registry=registry, id="engine", field="spec")
    async def engine_changed(body: Any, **kwargs: Any) -> None:
        await reconcile_engine(ctx, body, _indices(kwargs), template=True)

    @kopf.timer(*ENGINES, registry=registry, id="engine_tick", interval=settings.reconcile_interval)
    async def engine_tick(body: Any, **kwargs: Any) -> None:
        with contextlib.suppress(kopf.PermanentError):  # reported in status by create/update
            await reconcile_engine(ctx, body, _indices(kwargs))

    @kopf.on.event(*ENGINES, registry=registry, id="engine_gone")
    async def engine_gone(event: Any, namespace: str, name: str, spec: Any, **kwargs: Any) -> None:
        if event["type"] == "DELETED" and kwargs["session_index"].get((namespace, name)):
            await ensure_engine(ctx, namespace, spec["tutorId"], {})
