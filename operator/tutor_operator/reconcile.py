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
from .decisions import EnginePlan, PodView, SessionView, plan_engine
from .kube import KubeApi, resource_path
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
class Context:
    """The operator's shared state: API client, settings, one lock per engine."""

    api: KubeApi
    settings: OperatorSettings
    locks: dict[Key, asyncio.Lock] = dataclasses.field(default_factory=dict)

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
    error = spec_error(engine, ctx.settings)
    current = indices.replicas_of(key)
    plan = plan_engine(
        name=name,
        generation=engine["metadata"].get("generation"),
        scaling=None if error else engine_scaling(engine, ctx.settings),
        sessions=indices.sessions_of(key),
        pods=indices.pods_of(key),
        current_replicas=current or 0,
        status=engine.get("status") or {},
        now=dt.datetime.now(dt.UTC),
        error=error,
    )
    if not error and not plan.delete_engine:
        await _ensure_children(ctx, engine, indices, key, plan.replicas, current, template)
    sessions = {s.name: s for s in indices.sessions_of(key)}
    for session, patch in plan.session_patches.items():
        body: dict[str, Any] = {"status": patch}
        if session in plan.reassigned:  # never pin a session twice on a stale view
            body["metadata"] = {"resourceVersion": sessions[session].resource_version}
        path = _path(SESSION_PLURAL, namespace, session, "status")
        await ctx.api.patch(path, body, conflict_ok=True)
    for session in plan.expire:
        log.info("session %s/%s expired", namespace, session)
        await ctx.api.delete(_path(SESSION_PLURAL, namespace, session))
    if plan.delete_engine:
        log.info("deleting idle TutorEngine %s/%s", namespace, name)
        await ctx.api.delete(_path(ENGINE_PLURAL, namespace, name))
    elif plan.status_patch:
        await ctx.api.patch(
            _path(ENGINE_PLURAL, namespace, name, "status"), {"status": plan.status_patch}
        )
    if error:
        raise kopf.PermanentError(error)
    return plan


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
