"""The kopf handlers: they register, read their arguments and delegate to ``reconcile``."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from typing import Any

import kopf
from tutor_contract.tasks import cancel_and_wait

from . import GROUP, VERSION
from .decisions import pod_view, session_view
from .metrics import SESSION_KIND
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
from .reconcile import (
    Context,
    DeploymentView,
    Indices,
    ensure_engine,
    entry,
    pod_changed,
    reconcile_engine,
    report_session_error,
    run_engines,
)

ENGINES = (GROUP, VERSION, ENGINE_PLURAL)
SESSIONS = (GROUP, VERSION, SESSION_PLURAL)
NS = str | None  # a namespace as kopf types it; set for every resource watched here
OWNED: dict[str, Any] = {  # kopf.PRESENT is a MetaFilterToken, kopf does not export the type
    LABEL_ENGINE: kopf.PRESENT,
    LABEL_MANAGED_BY: MANAGER,
}


def _indices(ctx: Context, kwargs: dict[str, Any]) -> Indices:
    return Indices(
        sessions=kwargs["session_index"],
        engines=kwargs["engine_index"],
        pods=kwargs["pod_index"],
        deployments=kwargs["deployment_index"],
        services=kwargs["service_index"],
        pdbs=kwargs["pdb_index"],
        listings=ctx.listings,
    )


def configure_kopf(settings: kopf.OperatorSettings, ours: Any) -> None:
    """kopf's settings: our finalizer and annotations, and a bound on every API call."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.scanning.disabled = True
    # Bounded calls: a server that accepts and never answers costs a timeout, not a handler.
    settings.networking.request_timeout = ours.api_timeout
    settings.networking.connect_timeout = ours.api_connect_timeout
    # Watches: the server ends each after watch_timeout; the client gives up a little later,
    # and a stream silent past kopf's inactivity timeout (bookmarks come every minute) is
    # renewed.
    settings.watching.server_timeout = ours.watch_timeout
    settings.watching.client_timeout = ours.watch_timeout + 30
    settings.watching.connect_timeout = ours.api_connect_timeout


def register(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    """Register every handler of the operator in ``registry``, bound to ``ctx``."""
    settings = ctx.settings
    loop: list[asyncio.Task[None]] = []

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        configure_kopf(settings, ctx.settings)
        loop.append(asyncio.create_task(run_engines(ctx, _indices(ctx, kwargs)), name="engines"))

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if settings.api_server:
            token = settings.api_token or None
            return kopf.ConnectionInfo(server=settings.api_server, insecure=True, token=token)
        # kopf's own readers of the pod's service account, else the kubeconfig (the
        # official client's reader, login_via_client, needs the package we do not ship).
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await cancel_and_wait(loop)
        await ctx.readiness.close()
        await ctx.api.close()

    # Indices, all keyed by (namespace, engine name), each value an ``Entry``.
    @kopf.index(*SESSIONS, registry=registry, id="session_index")
    async def index_session(namespace: NS, spec: Any, body: Any, **_: Any) -> Any:
        tutor_id = spec.get("tutorId")
        if not isinstance(tutor_id, int) or tutor_id < 0:
            return None
        return {(namespace, engine_name(tutor_id)): entry(body, session_view(body))}

    @kopf.index("v1", "pods", registry=registry, id="pod_index", labels=OWNED)
    async def index_pod(namespace: NS, labels: Any, body: Any, **_: Any) -> Any:
        return {(namespace, labels[LABEL_ENGINE]): entry(body, pod_view(body))}

    @kopf.index("apps", "v1", "deployments", registry=registry, id="deployment_index", labels=OWNED)
    async def index_deployment(namespace: NS, name: str, spec: Any, body: Any, **_: Any) -> Any:
        annotations = dict(body["metadata"].get("annotations") or {})
        view = DeploymentView(spec.get("replicas", 1), annotations)
        return {(namespace, name): entry(body, view)}

    @kopf.index("v1", "services", registry=registry, id="service_index", labels=OWNED)
    async def index_service(namespace: NS, name: str, body: Any, **_: Any) -> Any:
        return {(namespace, name): entry(body, name)}

    # Pods: a pod that stops or starts serving moves sessions and endpoints at once.
    @kopf.on.event("v1", "pods", registry=registry, id="pod_event", labels=OWNED)
    async def pod_event(event: Any, namespace: NS, labels: Any, body: Any, **kwargs: Any) -> None:
        assert namespace is not None  # kopf passes it for namespaced resources
        key = (namespace, labels[LABEL_ENGINE])
        gone = event["type"] == "DELETED"
        with contextlib.suppress(kopf.PermanentError, kopf.TemporaryError):  # engine status
            await pod_changed(ctx, key, body, gone, _indices(ctx, kwargs))

    @kopf.index(
        "policy", "v1", "poddisruptionbudgets", registry=registry, id="pdb_index", labels=OWNED
    )
    async def index_pdb(namespace: NS, name: str, body: Any, **_: Any) -> Any:
        return {(namespace, name): entry(body, name)}

    @kopf.index(*ENGINES, registry=registry, id="engine_index")
    async def index_engine(namespace: NS, name: str, body: Any, **_: Any) -> Any:
        return {(namespace, name): entry(body, copy.deepcopy(dict(body)))}

    # Sessions: make sure their engine exists, then let it place them right away.
    @kopf.on.resume(*SESSIONS, registry=registry, id="session")
    @kopf.on.create(*SESSIONS, registry=registry, id="session")
    async def session_seen(
        namespace: NS, name: str, spec: Any, labels: Any, patch: kopf.Patch, **kwargs: Any
    ) -> None:
        assert namespace is not None  # kopf passes it for namespaced resources
        tutor_id = spec["tutorId"]
        if labels.get(LABEL_TUTOR_ID) != str(tutor_id):
            patch.metadata.labels[LABEL_TUTOR_ID] = str(tutor_id)
        indices = _indices(ctx, kwargs)
        try:
            with ctx.metrics.reconciling(SESSION_KIND):
                await ensure_engine(ctx, namespace, tutor_id, indices)
                engine = indices.engine_of((namespace, engine_name(tutor_id)))
                if engine is not None:
                    with contextlib.suppress(kopf.PermanentError):  # the engine reports it
                        await reconcile_engine(ctx, engine, indices)
        except kopf.TemporaryError as exc:
            await report_session_error(ctx, namespace, name, str(exc))
            raise

    # Metrics: sessions and engines by phase, as the watches show them.
    @kopf.on.event(*SESSIONS, registry=registry, id="session_event")
    async def session_event(event: Any, body: Any, **_: Any) -> None:
        ctx.metrics.session_event(event["type"], body)

    # Engines: children on creation, spec change and restart; the operator's loop
    # (reconcile.run_engines) does the rest, for engines handed over here.
    @kopf.on.resume(*ENGINES, registry=registry, id="engine")
    @kopf.on.create(*ENGINES, registry=registry, id="engine")
    @kopf.on.update(*ENGINES, registry=registry, id="engine", field="spec")
    async def engine_changed(
        namespace: NS, name: str, body: Any, reason: Any, **kwargs: Any
    ) -> None:
        assert namespace is not None  # kopf passes it for namespaced resources
        ctx.started.add((namespace, name))
        changed = reason == kopf.Reason.UPDATE
        await reconcile_engine(ctx, body, _indices(ctx, kwargs), changed=changed)

    @kopf.on.event(*ENGINES, registry=registry, id="engine_gone")
    async def engine_gone(
        event: Any, namespace: NS, name: str, spec: Any, body: Any, **kwargs: Any
    ) -> None:
        assert namespace is not None  # kopf passes it for namespaced resources
        ctx.metrics.engine_event(event["type"], body)
        if event["type"] != "DELETED":
            return
        ctx.started.discard((namespace, name))
        indices = _indices(ctx, kwargs)
        if any(not s.deleting for s in indices.sessions_of((namespace, name))):
            await ensure_engine(ctx, namespace, spec["tutorId"], indices)
