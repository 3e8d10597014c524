"""What the handlers do: read the indices, ask ``decisions`` for a plan, write it.

Every function here is idempotent — creates tolerate 409, deletes 404 — so a restarted
operator, or two passes over the same state, converge without duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

import kopf
from tutor_contract.crd import ACTIVE, PENDING
from tutor_contract.tasks import cancel_and_wait

from . import conditions as c
from .decisions import (
    ADOPT,
    POD_TERMINATING,
    REPLACE,
    EnginePlan,
    Listing,
    PodView,
    SessionView,
    is_current,
    plan_engine,
    pod_endpoint,
    pod_event_matters,
    pod_view,
    session_view,
    template_action,
)
from .kube import DEPLOYMENTS, ENGINES, PDBS, PODS, SERVICES, SESSIONS, Conflict, Kind, KubeApi
from .metrics import ENGINE_KIND, OperatorMetrics
from .names import (
    LABEL_ENGINE,
    LABEL_MANAGED_BY,
    MANAGER,
    SPEC_HASH,
    TEMPLATE_HASH,
    engine_name,
    format_time,
)
from .objects import (
    EngineSpec,
    build_default_engine,
    build_engine_deployment,
    build_engine_pdb,
    build_engine_service,
    checked,
    deployment_replacement,
    engine_scaling,
)
from .readiness import EngineReadiness
from .settings import OperatorSettings

Key = tuple[str, str]  # (namespace, name)
Index = Mapping[Key, Any]  # a kopf.Index: key -> a store (iterable) of Entry values
V = TypeVar("V")
OWNED = {LABEL_ENGINE: None, LABEL_MANAGED_BY: MANAGER}  # the operator's children (selector)
# What each index holds, and how a re-list of it selects (see ``resync``).
INDEXED: dict[str, tuple[Kind, Mapping[str, str | None]]] = {
    "sessions": (SESSIONS, {}),
    "engines": (ENGINES, {}),
    "pods": (PODS, OWNED),
    "deployments": (DEPLOYMENTS, OWNED),
    "services": (SERVICES, OWNED),
    "pdbs": (PDBS, OWNED),
}

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Written:
    """What the operator's own writes made of objects its indices have not caught up with.

    The indices trail the API by the watch stream's backlog: without this, every
    reconciliation until the events arrive would repeat the same writes (and, on deleted
    sessions, collect 404s). An entry holds while the index still shows the
    ``resourceVersion`` it was written over; any newer version replaces it.
    """

    engines: dict[Key, tuple[str, Mapping[str, Any]]] = dataclasses.field(default_factory=dict)
    sessions: dict[Key, dict[str, tuple[str, SessionView]]] = dataclasses.field(
        default_factory=dict
    )

    def engine(self, key: Key, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """``body`` (from an index) or what our last write made of it, if that is newer."""
        based_on, written = self.engines.get(key, ("", body))
        if based_on != str(body["metadata"].get("resourceVersion")):
            self.engines.pop(key, None)
            return body
        return written

    def sessions_of(self, key: Key, indexed: list[SessionView]) -> list[SessionView]:
        """The index's views of an engine's sessions, each replaced by our newer write."""
        mine, kept, views = self.sessions.get(key, {}), {}, []
        for view in indexed:
            entry = mine.get(view.name)
            if entry is not None and entry[0] == view.resource_version:
                kept[view.name] = entry
                view = entry[1]
            views.append(view)
        self.sessions[key] = kept
        return views

    def session(self, key: Key, based_on: str, view: SessionView) -> None:
        """Remember ``view`` as what a write over version ``based_on`` left."""
        self.sessions.setdefault(key, {})[view.name] = (based_on, view)


@dataclasses.dataclass(frozen=True)
class Entry(Generic[V]):
    """An index value: what the operator needs of an object, and which object, seen when."""

    uid: str
    indexed_at: float  # time.monotonic() when kopf indexed this version
    value: V


def entry(body: Mapping[str, Any], value: V) -> Entry[V]:
    """The index entry of ``body`` (for the index handlers)."""
    return Entry(str(body["metadata"].get("uid", "")), time.monotonic(), value)


@dataclasses.dataclass(frozen=True)
class DeploymentView:
    """What the operator needs of an engine's Deployment."""

    replicas: int
    annotations: Mapping[str, str]


@dataclasses.dataclass
class Context:
    """The operator's shared state: API client, settings, one lock per engine, own writes,
    the last re-list of each index, the engines kopf has handed to the operator, and the
    metrics."""

    api: KubeApi
    settings: OperatorSettings
    locks: dict[Key, asyncio.Lock] = dataclasses.field(default_factory=dict)
    written: Written = dataclasses.field(default_factory=Written)
    listings: dict[str, Listing] = dataclasses.field(default_factory=dict)
    started: set[Key] = dataclasses.field(default_factory=set)
    # What loading engines say on /readyz (their reason goes into the Loading messages).
    readiness: EngineReadiness = dataclasses.field(default_factory=EngineReadiness)
    metrics: OperatorMetrics = dataclasses.field(default_factory=OperatorMetrics)

    def __post_init__(self) -> None:
        self.metrics.use_listings(self.listings)

    def lock(self, key: Key) -> asyncio.Lock:
        """Serialise reconciliations of one engine (the loop and its sessions' handlers)."""
        return self.locks.setdefault(key, asyncio.Lock())


@dataclasses.dataclass(frozen=True)
class Indices:
    """The operator's views of sessions, engines, pods and children, keyed by
    (namespace, engine), without entries a re-list has shown to be gone."""

    sessions: Index
    engines: Index
    pods: Index
    deployments: Index
    services: Index
    pdbs: Index
    listings: Mapping[str, Listing] = dataclasses.field(default_factory=dict)

    def _current(self, name: str, key: Key) -> list[Any]:
        listing = self.listings.get(name)
        index: Index = getattr(self, name)
        return [e.value for e in index.get(key, ()) if is_current(e.uid, e.indexed_at, listing)]

    def sessions_of(self, key: Key) -> list[SessionView]:
        return self._current("sessions", key)

    def pods_of(self, key: Key) -> list[PodView]:
        return self._current("pods", key)

    def engine_of(self, key: Key) -> Mapping[str, Any] | None:
        return next(iter(self._current("engines", key)), None)

    def deployment_of(self, key: Key) -> DeploymentView | None:
        return next(iter(self._current("deployments", key)), None)

    def has_service(self, key: Key) -> bool:
        return bool(self._current("services", key))

    def has_pdb(self, key: Key) -> bool:
        return bool(self._current("pdbs", key))

    def live_engines(self) -> Iterator[tuple[Key, Mapping[str, Any]]]:
        """Every engine still there, with its latest body."""
        for key in list(self.engines.keys()):
            if (body := self.engine_of(key)) is not None:
                yield key, body

    def orphans(self) -> Iterator[Key]:
        """Engine keys that live sessions name, but that have no engine."""
        for key in list(self.sessions.keys()):
            if self.engine_of(key) is None and any(not s.deleting for s in self.sessions_of(key)):
                yield key


async def resync(ctx: Context) -> None:
    """Re-list every indexed kind; ``Indices`` then drop entries of objects gone meanwhile."""
    namespace = ctx.settings.namespace or None
    for name, (kind, labels) in INDEXED.items():
        started = time.monotonic()
        try:
            items = await ctx.api.list(kind, namespace, labels)
        except kopf.TemporaryError as exc:
            log.warning("could not re-list %s: %s", kind.plural, exc)
            continue
        uids = frozenset(str(obj["metadata"].get("uid", "")) for obj in items)
        ctx.listings[name] = Listing(started, uids)


async def ensure_engine(ctx: Context, namespace: str, tutor_id: int, indices: Indices) -> None:
    """Create the tutor's TutorEngine from the defaults unless one exists (an admin's is kept)."""
    if indices.engine_of((namespace, engine_name(tutor_id))) is not None:
        return
    engine = build_default_engine(tutor_id, namespace, ctx.settings.engine_defaults)
    if await ctx.api.create(ENGINES, namespace, engine) is not None:
        log.info("created TutorEngine %s/%s from defaults", namespace, engine_name(tutor_id))


async def report_session_error(ctx: Context, namespace: str, name: str, message: str) -> None:
    """Best effort: show an error on a session's Ready condition."""
    cond = c.condition(c.READY, False, c.API_ERROR, message)
    cond["lastTransitionTime"] = format_time(dt.datetime.now(dt.UTC))
    body = {"status": {"phase": PENDING, "conditions": [cond]}}
    try:
        await ctx.api.patch(SESSIONS, namespace, name, body, subresource="status")
    except kopf.TemporaryError:
        log.warning("could not report an error on session %s/%s", namespace, name)


async def reconcile_engine(
    ctx: Context, engine: Mapping[str, Any], indices: Indices, *, changed: bool = False
) -> EnginePlan:
    """Bring one engine's Deployment, Service, PDB, pods, sessions and status in line with a
    fresh plan. ``changed``: kopf saw the engine's spec change (an update handler).
    """
    meta = engine["metadata"]
    key: Key = (meta["namespace"], meta["name"])
    async with ctx.lock(key):
        try:
            with ctx.metrics.reconciling(ENGINE_KIND):
                return await _reconcile(ctx, engine, indices, key, changed)
        except (kopf.TemporaryError, kopf.PermanentError) as exc:
            await _report_engine_error(ctx, engine, str(exc))
            raise


async def _reconcile(
    ctx: Context, engine: Mapping[str, Any], indices: Indices, key: Key, changed: bool
) -> EnginePlan:
    namespace, name = key
    engine_rv = str(engine["metadata"].get("resourceVersion"))
    engine = ctx.written.engine(key, engine)
    resolved, error = checked(engine, ctx.settings.engine_defaults)
    deployment = indices.deployment_of(key)
    current = None if deployment is None else deployment.replicas
    sessions = ctx.written.sessions_of(key, indices.sessions_of(key))
    template = _Template(busy=any(not s.deleting for s in sessions), changed=changed)
    built = None if resolved is None else build_engine_deployment(resolved, 0)  # once a pass
    if built is not None and deployment is not None:
        template.action = template.decide(deployment.annotations, built)
    plan = plan_engine(
        name=name,
        generation=engine["metadata"].get("generation"),
        scaling=None if resolved is None else engine_scaling(resolved),
        sessions=sessions,
        pods=ctx.readiness.views(indices.pods_of(key)),
        current_replicas=current or 0,
        status=engine.get("status") or {},
        now=dt.datetime.now(dt.UTC),
        error=error,
        rollout=template.action == REPLACE,
    )
    template.ready = plan.rollout_ready
    if resolved is not None and built is not None and not plan.delete_engine:
        for pod, marks in plan.pod_patches.items():
            await ctx.api.patch(PODS, namespace, pod, marks)
        await _ensure_children(ctx, resolved, built, indices, key, plan.replicas, current, template)
    indexed = {s.name: s.resource_version for s in indices.sessions_of(key)}
    views = {s.name: s for s in sessions}
    for session, patch in plan.session_patches.items():
        after = await _patch_session(
            ctx, namespace, views[session], patch, guard=session in plan.reassigned
        )
        ctx.written.session(key, indexed[session], after)
        if patch.get("phase") == ACTIVE and after.phase == ACTIVE and not after.deleting:
            tutor_id = (engine.get("spec") or {}).get("tutorId", name.removeprefix("tutor-"))
            ctx.metrics.activated(namespace, session, after.created, tutor_id)
    for session in plan.expire:
        log.info("session %s/%s expired", namespace, session)
        await ctx.api.delete(SESSIONS, namespace, session)
        gone = dataclasses.replace(views[session], deleting=True)
        ctx.written.session(key, indexed[session], gone)
    if plan.delete_engine:
        log.info("deleting idle TutorEngine %s/%s", namespace, name)
        await ctx.api.delete(ENGINES, namespace, name)
    elif plan.status_patch:
        patched = await ctx.api.patch(
            ENGINES, namespace, name, {"status": plan.status_patch}, subresource="status"
        )
        if patched is not None:
            ctx.written.engines[key] = (engine_rv, patched)
    if error:
        raise kopf.PermanentError(error)
    return plan


async def pod_changed(
    ctx: Context, key: Key, pod: Mapping[str, Any], gone: bool, indices: Indices
) -> None:
    """Reconcile a pod's engine now if the pod's event moves sessions or changes its
    ``readyEndpoints`` (``decisions.pod_event_matters``); the loop's next pass does the rest.

    So a pod that starts terminating leaves ``readyEndpoints`` and its sessions move while
    its preStop pause runs, instead of up to a reconcile interval later.
    """
    body = indices.engine_of(key)
    if body is None or key not in ctx.started:
        return
    view = pod_view(pod)
    if gone:
        view = dataclasses.replace(view, state=POD_TERMINATING)
    status = ctx.written.engine(key, body).get("status") or {}
    if pod_event_matters(view, pod_endpoint(pod), status, indices.sessions_of(key)):
        await reconcile_engine(ctx, body, indices)


@dataclasses.dataclass
class _Template:
    """Whether an existing Deployment's pod template is written this pass (``_reconcile``)."""

    busy: bool  # the engine holds sessions
    changed: bool  # kopf saw its spec change
    action: str | None = None  # from the index's view of the Deployment
    ready: bool = True  # every pod shows its session count as its deletion cost

    def decide(self, annotations: Mapping[str, str], built: Mapping[str, Any]) -> str | None:
        ours = built["metadata"]["annotations"]
        return template_action(
            annotations, ours[SPEC_HASH], ours[TEMPLATE_HASH], self.busy, self.changed
        )


async def _patch_session(
    ctx: Context, namespace: str, view: SessionView, patch: dict[str, Any], *, guard: bool
) -> SessionView:
    """Write a session's status; return what it is now (``deleting`` once it is gone).

    A ``guard``ed patch pins the session to a pod, so it names the version it was planned on:
    a session changed meanwhile (the gateway's writes, say) is read again and pinned only if
    it is still on the pod it was planned from (or none), instead of waiting for the next
    reconciliation.
    """
    planned_from = view.pod
    for attempt in range(2):
        body: dict[str, Any] = {"status": patch}
        if guard:
            body["metadata"] = {"resourceVersion": view.resource_version}
        try:
            after = await ctx.api.patch(SESSIONS, namespace, view.name, body, subresource="status")
        except Conflict:
            current = await ctx.api.get(SESSIONS, namespace, view.name)
            if current is None:
                break
            view = session_view(current)
            if attempt or view.pod != planned_from or view.deleting:
                return view
            continue
        return dataclasses.replace(view, deleting=True) if after is None else session_view(after)
    return dataclasses.replace(view, deleting=True)


async def _ensure_children(
    ctx: Context,
    engine: EngineSpec,
    built: dict[str, Any],
    indices: Indices,
    key: Key,
    replicas: int,
    current: int | None,
    template: _Template,
) -> None:
    """Create, replace or scale ``engine``'s Deployment (``built``, with any replica count),
    and create its Service and PDB if missing."""
    namespace, name = key
    deployment = {**built, "spec": {**built["spec"], "replicas": replicas}}
    if current is None:
        created = await ctx.api.create(DEPLOYMENTS, namespace, deployment)
        if created is not None:
            log.info("created Deployment %s/%s with %d replicas", namespace, name, replicas)
            current = replicas
    elif template.action is not None:
        current = await _write_template(ctx, key, deployment, template, current)
    if current is not None and current != replicas:
        log.info("scaling %s/%s to %d replicas", namespace, name, replicas)
        await ctx.api.patch(DEPLOYMENTS, namespace, name, {"spec": {"replicas": replicas}})
    if not indices.has_service(key):
        await ctx.api.create(SERVICES, namespace, build_engine_service(engine))
    if ctx.settings.engine_defaults.disruption_budget and not indices.has_pdb(key):
        await ctx.api.create(PDBS, namespace, build_engine_pdb(engine))


async def _write_template(
    ctx: Context, key: Key, deployment: dict[str, Any], template: _Template, current: int
) -> int | None:
    """Replace (PUT) the Deployment with ``deployment``, or adopt it, if the live object
    still calls for it (the index may trail our last write); the replicas it then has.

    A replacement waits (this pass keeps the old template) until the pods show their session
    counts, so the rollout removes the emptiest pods first.
    """
    namespace, name = key
    live = await ctx.api.get(DEPLOYMENTS, namespace, name)
    if live is None:  # deleted meanwhile: the next pass creates it again
        return None
    live_replicas = int((live.get("spec") or {}).get("replicas", current))
    action = template.decide((live.get("metadata") or {}).get("annotations") or {}, deployment)
    if action == ADOPT:
        log.info("adopting Deployment %s/%s of an earlier operator as it is", namespace, name)
        digest = deployment["metadata"]["annotations"][SPEC_HASH]
        patch = {"metadata": {"annotations": {SPEC_HASH: digest}}}
        await ctx.api.patch(DEPLOYMENTS, namespace, name, patch)
        return live_replicas
    if action != REPLACE or not template.ready:
        return live_replicas
    log.info("replacing the pod template of Deployment %s/%s", namespace, name)
    replicas = deployment["spec"]["replicas"]
    await ctx.api.replace(
        DEPLOYMENTS, namespace, deployment_replacement(live, deployment, replicas)
    )
    return replicas


async def _report_engine_error(ctx: Context, engine: Mapping[str, Any], message: str) -> None:
    meta = engine["metadata"]
    status = engine.get("status") or {}
    cond = c.condition(c.RECONCILED, False, c.API_ERROR, message, meta.get("generation"))
    conds, changed = c.set_condition(
        status.get("conditions"), cond, format_time(dt.datetime.now(dt.UTC))
    )
    if not changed:
        return
    body = {"status": {"conditions": conds}}
    try:
        await ctx.api.patch(ENGINES, meta["namespace"], meta["name"], body, subresource="status")
    except kopf.TemporaryError:
        log.warning("could not report an error on engine %s", meta["name"])


async def run_engines(ctx: Context, indices: Indices) -> None:
    """The operator-wide loop: reconcile every engine each ``reconcile_interval``, re-list
    every ``resync_interval``, and recreate engines that sessions still need.

    One loop instead of a kopf timer per engine: kopf timers put a finalizer on every
    TutorEngine, so deleting a namespace would hang on an operator that is gone. Each engine
    runs in its own task; one still running (its API calls are bounded) is not started twice.
    """
    settings = ctx.settings
    running: dict[Key, asyncio.Task[None]] = {}
    resyncing: asyncio.Task[None] | None = None
    next_resync = time.monotonic() + settings.resync_interval
    try:
        while True:
            if time.monotonic() >= next_resync and (resyncing is None or resyncing.done()):
                resyncing = asyncio.create_task(resync(ctx), name="resync")
                next_resync = time.monotonic() + settings.resync_interval
            for key, body in indices.live_engines():
                task = running.get(key)
                if key in ctx.started and (task is None or task.done()):
                    running[key] = asyncio.create_task(_tick(ctx, body, indices))
            for namespace, name in indices.orphans():
                with contextlib.suppress(ValueError, kopf.TemporaryError, kopf.PermanentError):
                    tutor_id = int(name.removeprefix("tutor-"))
                    await ensure_engine(ctx, namespace, tutor_id, indices)
            for key in [k for k, t in running.items() if t.done()]:
                running.pop(key)
            await asyncio.sleep(settings.reconcile_interval)
    finally:
        await cancel_and_wait([*running.values(), resyncing])


async def _tick(ctx: Context, engine: Mapping[str, Any], indices: Indices) -> None:
    try:
        await reconcile_engine(ctx, engine, indices)
    except (kopf.TemporaryError, kopf.PermanentError):
        pass  # reported in the engine's status; the next tick tries again
    except Exception:
        log.exception("reconciling %s failed", engine["metadata"].get("name"))
