"""What the handlers do: read the indices, ask ``decisions`` for a plan, write it.

Every function here is idempotent — creates tolerate 409, deletes 404 — so a restarted
operator, or two passes over the same state, converge without duplicates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from . import API_VERSION
from . import conditions as c
from .decisions import EnginePlan, PodView, SessionView, plan_engine, session_view
from .kube import Conflict, KubeApi, resource_path
from .names import ENGINE_PLURAL, SESSION_PLURAL, engine_name, format_time
from .objects import (
    build_default_engine,
    build_engine_deployment,
    build_engine_service,
    deployment_template_patch,
    engine_scaling,
    spec_error,
)
from .settings import OperatorSettings

Key = tuple[str, str]  # (namespace, name)
Index = Mapping[Key, Any]  # a kopf.Index: key -> a store (iterable) of values

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


@dataclasses.dataclass
class Context:
    """The operator's shared state: API client, settings, one lock per engine, own writes."""

    api: KubeApi
    settings: OperatorSettings
    locks: dict[Key, asyncio.Lock] = dataclasses.field(default_factory=dict)
    written: Written = dataclasses.field(default_factory=Written)

    def lock(self, key: Key) -> asyncio.Lock:
        """Serialise reconciliations of one engine (its timer and its sessions' handlers)."""
        return self.locks.setdefault(key, asyncio.Lock())


@dataclasses.dataclass(frozen=True)
class Indices:
    """The operator's views of sessions, pods and children, keyed by (namespace, engine)."""

    sessions: Index
    pods: Index
    deployments: Index
    services: Index

    def sessions_of(self, key: Key) -> list[SessionView]:
        return list(self.sessions.get(key, ()))

    def pods_of(self, key: Key) -> list[PodView]:
        return list(self.pods.get(key, ()))

    def replicas_of(self, key: Key) -> int | None:
        return next(iter(self.deployments.get(key, ())), None)


def _path(plural: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    api_version = (
        API_VERSION
        if plural in (ENGINE_PLURAL, SESSION_PLURAL)
        else ("apps/v1" if plural == "deployments" else "v1")
    )
    return resource_path(api_version, plural, namespace, name, sub)


async def ensure_engine(ctx: Context, namespace: str, tutor_id: int, engines: Index) -> None:
    """Create the tutor's TutorEngine from the defaults unless one exists (an admin's is kept)."""
    if (namespace, engine_name(tutor_id)) in engines:
        return
    engine = build_default_engine(tutor_id, namespace, ctx.settings)
    if await ctx.api.create(_path(ENGINE_PLURAL, namespace), engine) is not None:
        log.info("created TutorEngine %s/%s from defaults", namespace, engine_name(tutor_id))


async def report_session_error(ctx: Context, namespace: str, name: str, message: str) -> None:
    """Best effort: show an error on a session's Ready condition."""
    cond = c.condition(c.READY, False, c.API_ERROR, message)
    cond["lastTransitionTime"] = format_time(dt.datetime.now(dt.UTC))
    body = {"status": {"phase": "Pending", "conditions": [cond]}}
    try:
        await ctx.api.patch(_path(SESSION_PLURAL, namespace, name, "status"), body)
    except kopf.TemporaryError:
        log.warning("could not report an error on session %s/%s", namespace, name)


async def reconcile_engine(
    ctx: Context, engine: Mapping[str, Any], indices: Indices, *, template: bool = False
) -> EnginePlan:
    """Bring one engine's Deployment, Service, sessions and status in line with a fresh plan.

    ``template`` also rewrites the Deployment's pod template (after a spec change or restart).
    """
    meta = engine["metadata"]
    key: Key = (meta["namespace"], meta["name"])
    async with ctx.lock(key):
        try:
            return await _reconcile(ctx, engine, indices, key, template)
        except (kopf.TemporaryError, kopf.PermanentError) as exc:
            await _report_engine_error(ctx, engine, str(exc))
            raise


async def _reconcile(
    ctx: Context, engine: Mapping[str, Any], indices: Indices, key: Key, template: bool
) -> EnginePlan:
    namespace, name = key
    engine_rv = str(engine["metadata"].get("resourceVersion"))
    engine = ctx.written.engine(key, engine)
    error = spec_error(engine, ctx.settings)
    current = indices.replicas_of(key)
    sessions = ctx.written.sessions_of(key, indices.sessions_of(key))
    plan = plan_engine(
        name=name,
        generation=engine["metadata"].get("generation"),
        scaling=None if error else engine_scaling(engine, ctx.settings),
        sessions=sessions,
        pods=indices.pods_of(key),
        current_replicas=current or 0,
        status=engine.get("status") or {},
        now=dt.datetime.now(dt.UTC),
        error=error,
    )
    if not error and not plan.delete_engine:
        await _ensure_children(ctx, engine, indices, key, plan.replicas, current, template)
    indexed = {s.name: s.resource_version for s in indices.sessions_of(key)}
    views = {s.name: s for s in sessions}
    for session, patch in plan.session_patches.items():
        after = await _patch_session(
            ctx, namespace, views[session], patch, guard=session in plan.reassigned
        )
        ctx.written.session(key, indexed[session], after)
    for session in plan.expire:
        log.info("session %s/%s expired", namespace, session)
        await ctx.api.delete(_path(SESSION_PLURAL, namespace, session))
        gone = dataclasses.replace(views[session], deleting=True)
        ctx.written.session(key, indexed[session], gone)
    if plan.delete_engine:
        log.info("deleting idle TutorEngine %s/%s", namespace, name)
        await ctx.api.delete(_path(ENGINE_PLURAL, namespace, name))
    elif plan.status_patch:
        after = await ctx.api.patch(
            _path(ENGINE_PLURAL, namespace, name, "status"), {"status": plan.status_patch}
        )
        if after is not None:
            ctx.written.engines[key] = (engine_rv, after)
    if error:
        raise kopf.PermanentError(error)
    return plan


async def _patch_session(
    ctx: Context, namespace: str, view: SessionView, patch: dict[str, Any], *, guard: bool
) -> SessionView:
    """Write a session's status; return what it is now (``deleting`` once it is gone).

    A ``guard``ed patch pins the session to a pod, so it names the version it was planned on:
    a session changed meanwhile (the gateway's writes, say) is read again and pinned only if
    it still has no pod, instead of waiting for the next reconciliation.
    """
    path = _path(SESSION_PLURAL, namespace, view.name, "status")
    for attempt in range(2):
        body: dict[str, Any] = {"status": patch}
        if guard:
            body["metadata"] = {"resourceVersion": view.resource_version}
        try:
            after = await ctx.api.patch(path, body)
        except Conflict:
            current = await ctx.api.get(_path(SESSION_PLURAL, namespace, view.name))
            if current is None:
                break
            view = session_view(current)
            if attempt or view.pod or view.deleting:
                return view
            continue
        return dataclasses.replace(view, deleting=True) if after is None else session_view(after)
    return dataclasses.replace(view, deleting=True)


async def _ensure_children(
    ctx: Context,
    engine: Mapping[str, Any],
    indices: Indices,
    key: Key,
    replicas: int,
    current: int | None,
    template: bool,
) -> None:
    namespace, name = key
    deployment = build_engine_deployment(engine, ctx.settings, replicas)
    path = _path("deployments", namespace, name)
    if current is None:
        created = await ctx.api.create(_path("deployments", namespace), deployment)
        if created is not None:
            log.info("created Deployment %s/%s with %d replicas", namespace, name, replicas)
            current = replicas
    if template:
        await ctx.api.patch(path, deployment_template_patch(deployment))
    if current != replicas:
        log.info("scaling %s/%s to %d replicas", namespace, name, replicas)
        await ctx.api.patch(path, {"spec": {"replicas": replicas}})
    if key not in indices.services:
        service = build_engine_service(engine, ctx.settings)
        await ctx.api.create(_path("services", namespace), service)


async def _report_engine_error(ctx: Context, engine: Mapping[str, Any], message: str) -> None:
    meta = engine["metadata"]
    status = engine.get("status") or {}
    cond = c.condition(c.RECONCILED, False, c.API_ERROR, message, meta.get("generation"))
    conds, changed = c.set_condition(
        status.get("conditions"), cond, format_time(dt.datetime.now(dt.UTC))
    )
    if not changed:
        return
    try:
        path = _path(ENGINE_PLURAL, meta["namespace"], meta["name"], "status")
        await ctx.api.patch(path, {"status": {"conditions": conds}})
    except kopf.TemporaryError:
        log.warning("could not report an error on engine %s", meta["name"])
