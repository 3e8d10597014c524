"""Pure decisions: pod state, session expiry, replica counts, session-to-pod assignment.

Plain data in, plain data out, no I/O: ``plan_engine`` turns one engine's observed world
(its sessions and pods, as the operator's indices hold them) into what should be written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from tutor_contract.crd import (
    ACTIVE,
    ENGINE_FAILED,
    ENGINE_IDLE,
    ENGINE_PENDING,
    ENGINE_READY,
    ENGINE_SCALED_DOWN,
    EXPIRED,
    FAILED,
    PENDING,
    READY_ENDPOINTS,
)

from . import conditions as c
from .names import (
    DELETION_COST,
    DO_NOT_DISRUPT,
    LABEL_BUSY,
    PORT_NAME,
    SAFE_TO_EVICT,
    SPEC_HASH,
    TEMPLATE_HASH,
    format_time,
    parse_time,
)

POD_READY = "Ready"
POD_TERMINATING = "Terminating"
POD_FAILED = "Failed"
# Not-ready pods take the session condition reasons, best (closest to ready) first.
_WAITING_RANK = {
    c.LOADING: 0,
    c.PULLING: 1,
    c.SCHEDULING: 2,
    c.ERR_IMAGE_PULL: 3,
    c.IMAGE_PULL_BACKOFF: 4,
    c.MODEL_LOAD_FAILED: 5,
    c.CRASHING: 6,
}
# An engine whose best pod is in one of these is Failed until a pod gets ready again.
_FAILING = {c.ERR_IMAGE_PULL, c.IMAGE_PULL_BACKOFF, c.MODEL_LOAD_FAILED, c.CRASHING}
# The kubelet's waiting reasons of an image that does not pull, shown as they are.
_IMAGE_REASONS = {c.ERR_IMAGE_PULL, c.IMAGE_PULL_BACKOFF}
# The engine's exit code after writing a model load failure to its termination message
# (engine-image: ENGINE_EXIT_ON_LOAD_FAILURE).
EXIT_LOAD_FAILED = 3
MESSAGE_CHARS = 1024  # of a termination message, in conditions
_CRASH_REASONS = {
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "InvalidImageName",
    "ErrImageNeverPull",
}
DEFAULT_PORT = 8000


@dataclasses.dataclass(frozen=True)
class PodView:
    """What the operator needs of an engine pod."""

    name: str
    state: str
    message: str = ""
    endpoint: str | None = None
    busy: bool = False  # marked as holding sessions (label, eviction guards)
    cost: int = 0  # its pod-deletion-cost annotation (absent: 0)


@dataclasses.dataclass(frozen=True)
class SessionView:
    """What the operator needs of a TutorSession."""

    name: str
    created: dt.datetime
    timeout_seconds: int = 3600
    resource_version: str = ""
    phase: str | None = None
    engine: str | None = None
    pod: str | None = None
    endpoint: str | None = None
    last_activity: dt.datetime | None = None
    conditions: tuple[dict[str, Any], ...] = ()
    deleting: bool = False


@dataclasses.dataclass(frozen=True)
class Scaling:
    """An engine's effective scaling and idling parameters."""

    min_replicas: int
    max_replicas: int
    per_replica: int
    idle_timeout: int
    idle_policy: str
    deletable: bool  # created by the operator from its defaults, so Delete may remove it


@dataclasses.dataclass
class EnginePlan:
    """What one reconciliation of an engine should write."""

    replicas: int
    status_patch: dict[str, Any]
    session_patches: dict[str, dict[str, Any]]
    reassigned: set[str]  # sessions whose pod changes: patch them only if unchanged meanwhile
    expire: list[str]  # delete these (after their Expired status patch, if any)
    delete_engine: bool
    pod_patches: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    rollout_ready: bool = True  # pods carry their session counts: a template change may go


@dataclasses.dataclass(frozen=True)
class Listing:
    """What one re-list of a kind showed: the uids it held, and when it was asked for."""

    started: float  # the operator's monotonic clock, just before the LIST went out
    uids: frozenset[str]


def is_current(uid: str, indexed_at: float, listing: Listing | None) -> bool:
    """Whether an index entry still stands: in the last re-list, or indexed since it began.

    kopf drops an entry only on a DELETED event; after a watch gap ending in 410 Gone it
    re-lists but keeps entries of objects deleted meanwhile. Those are neither in a later
    LIST nor indexed after it started, so they are dropped here.
    """
    return listing is None or uid in listing.uids or indexed_at >= listing.started


REPLACE, ADOPT = "replace", "adopt"


def template_action(
    annotations: Mapping[str, str] | None,
    spec_digest: str,
    template_digest: str,
    busy: bool,
    changed: bool = False,
) -> str | None:
    """Whether to write an existing Deployment's pod template: ``REPLACE``, ``ADOPT`` or not.

    The Deployment's annotations say which effective spec and which template (as its
    operator version built it) it runs. A changed spec is always written. The same spec with
    a template a newer operator builds differently (an upgrade) is written only to an
    engine without sessions, so an upgrade never rolls busy engines. A Deployment from before
    these annotations is adopted when busy and unchanged (``changed``: kopf saw its spec
    change): stamped with the spec's digest, its pods kept.
    """
    annotations = annotations or {}
    if annotations.get(SPEC_HASH) == spec_digest:
        if annotations.get(TEMPLATE_HASH) == template_digest or busy:
            return None
        return REPLACE
    if annotations.get(SPEC_HASH) is None and busy and not changed:
        return ADOPT
    return REPLACE


def pod_marks(sessions: int) -> dict[str, Any]:
    """The metadata merge patch marking a pod that holds ``sessions`` sessions.

    A busy pod is labelled for its engine's PodDisruptionBudget and guarded from the cluster
    autoscaler's and Karpenter's consolidation; its deletion cost (the ReplicaSet removes
    the cheapest pods first) is its session count. An idle pod carries none of these.
    """
    busy = sessions > 0
    return {
        "metadata": {
            "labels": {LABEL_BUSY: "true" if busy else None},
            "annotations": {
                DELETION_COST: str(sessions) if busy else None,
                SAFE_TO_EVICT: "false" if busy else None,
                DO_NOT_DISRUPT: "true" if busy else None,
            },
        }
    }


def pod_endpoint(pod: Mapping[str, Any]) -> str | None:
    """``http://<podIP>:<port>`` of the engine container's named port, or ``None`` without IP."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    port = DEFAULT_PORT
    for container in (pod.get("spec") or {}).get("containers") or []:
        ports = container.get("ports") or []
        named = [p for p in ports if p.get("name") == PORT_NAME] or ports
        if named:
            port = named[0].get("containerPort", DEFAULT_PORT)
            break
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}"


def pod_view(pod: Mapping[str, Any]) -> PodView:
    """Classify a pod (Ready, or why not: Scheduling, Pulling, ImagePullBackOff, Loading,
    Crashing, ...; or gone) and read the marks the operator put on it."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    name = meta.get("name", "")
    view = _pod_state(name, meta, status, pod)
    busy = (meta.get("labels") or {}).get(LABEL_BUSY) == "true"
    return dataclasses.replace(
        view, busy=busy, cost=_int((meta.get("annotations") or {}).get(DELETION_COST))
    )


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _pod_state(
    name: str, meta: Mapping[str, Any], status: Mapping[str, Any], pod: Mapping[str, Any]
) -> PodView:
    if meta.get("deletionTimestamp"):
        return PodView(name, POD_TERMINATING, "pod is terminating")
    if status.get("phase") in ("Succeeded", "Failed"):
        return PodView(name, POD_FAILED, status.get("message") or f"pod {status['phase']}")
    conds = {cond.get("type"): cond for cond in status.get("conditions") or []}
    scheduled = conds.get("PodScheduled") or {}
    if scheduled.get("status") != "True":
        return PodView(name, c.SCHEDULING, scheduled.get("message") or "waiting for a node")
    statuses = status.get("containerStatuses") or []
    if not statuses:
        return PodView(name, c.PULLING, "ContainerCreating")
    endpoint = pod_endpoint(pod)
    if (conds.get("Ready") or {}).get("status") == "True" and endpoint:
        return PodView(name, POD_READY, "", endpoint)
    for container in statuses:
        if failed := _load_failure(container):
            return PodView(name, c.MODEL_LOAD_FAILED, failed, endpoint)
    for container in statuses:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting:
            reason = waiting.get("reason") or "ContainerCreating"
            if reason in _CRASH_REASONS:
                return PodView(name, c.CRASHING, _crash_message(container, reason, waiting))
            if reason in _IMAGE_REASONS:
                return PodView(name, reason, waiting.get("message") or reason)
            text = f"{reason}: {waiting['message']}" if waiting.get("message") else reason
            return PodView(name, c.PULLING, text)
    return PodView(name, c.LOADING, "engine is loading its models", endpoint)


def _terminated(container: Mapping[str, Any]) -> Mapping[str, Any]:
    return (container.get("lastState") or {}).get("terminated") or {}


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MESSAGE_CHARS else "…" + text[-MESSAGE_CHARS:]


def _load_failure(container: Mapping[str, Any]) -> str | None:
    """The termination message of a container that last exited on a model load failure."""
    last = _terminated(container)
    if last.get("exitCode") != EXIT_LOAD_FAILED:
        return None
    message = _short(last.get("message") or "models failed to load")
    restarts = container.get("restartCount", 0)
    return f"{message} (container {container.get('name')}, {restarts} restarts)"


def _crash_message(container: Mapping[str, Any], reason: str, waiting: Mapping[str, Any]) -> str:
    last = _terminated(container)
    if "exitCode" not in last:
        return f"{reason}: {waiting['message']}" if waiting.get("message") else reason
    text = f"{reason}: container {container.get('name')} exited with code {last['exitCode']}"
    return f"{text}: {_short(last['message'])}" if last.get("message") else text


def ready_endpoints(pods: Iterable[PodView]) -> list[str]:
    """The sorted base URLs of the ready pods (a terminating pod is never ready here)."""
    return sorted({p.endpoint for p in pods if p.state == POD_READY and p.endpoint})


def pod_event_matters(
    pod: PodView, endpoint: str | None, status: Mapping[str, Any], sessions: Iterable[SessionView]
) -> bool:
    """Whether a pod's event changes its engine's placement or ``readyEndpoints`` at once.

    A pod that stops serving (not ready, terminating, gone: ``Terminating``) matters while it
    is listed or holds sessions, so they move to other pods before it stops; a ready pod
    matters until it is listed, so waiting sessions get it. Other events wait for the loop.
    """
    listed = endpoint is not None and endpoint in (status.get(READY_ENDPOINTS) or ())
    if pod.state == POD_READY:
        return not listed
    return listed or any(s.pod == pod.name and not s.deleting for s in sessions)


def session_view(body: Mapping[str, Any]) -> SessionView:
    """Read a TutorSession body into a ``SessionView``."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    status = body.get("status") or {}
    return SessionView(
        name=meta.get("name", ""),
        created=parse_time(meta.get("creationTimestamp")) or dt.datetime.now(dt.UTC),
        timeout_seconds=int(spec.get("timeoutSeconds") or 3600),
        resource_version=str(meta.get("resourceVersion") or ""),
        phase=status.get("phase"),
        engine=status.get("engine"),
        pod=status.get("pod"),
        endpoint=status.get("endpoint"),
        last_activity=parse_time(status.get("lastActivity")),
        conditions=tuple(status.get("conditions") or ()),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def is_expired(session: SessionView, now: dt.datetime) -> bool:
    """Idle for its timeout: no activity (or, before any, creation) for ``timeout_seconds`` or
    more (the gateway's ``policy.is_expired`` draws the same line)."""
    return (now - _last_seen(session)).total_seconds() >= session.timeout_seconds


def _last_seen(session: SessionView) -> dt.datetime:
    return session.last_activity or session.created


def desired_replicas(
    sessions: int, busy_pods: int, scaling: Scaling, current: int, idle_expired: bool
) -> int:
    """Replicas for ``sessions`` live sessions, never fewer than the pods that hold sessions.

    With no sessions one replica stays warm until the idle timeout, then ``min_replicas``.
    """
    if sessions:
        need = math.ceil(sessions / scaling.per_replica)
        return min(max(need, busy_pods, scaling.min_replicas, 1), scaling.max_replicas)
    if idle_expired:
        return min(scaling.min_replicas, scaling.max_replicas)
    return min(max(scaling.min_replicas, min(current, 1)), scaling.max_replicas)


def waiting_reason(
    pods: Iterable[PodView], scaling: Scaling, engine: str, current: int
) -> tuple[str, str]:
    """Why a session without a pod waits: the best not-ready pod's state, or capacity."""
    pods = list(pods)
    waiting = [p for p in pods if p.state in _WAITING_RANK]
    if waiting:
        best = min(waiting, key=lambda p: (_WAITING_RANK[p.state], p.name))
        return best.state, f"pod {best.name}: {best.message}"
    ready = [p for p in pods if p.state == POD_READY]
    if ready and len(ready) >= scaling.max_replicas:
        return c.AT_CAPACITY, (
            f"all {len(ready)} replicas of {engine} serve {scaling.per_replica} sessions each"
        )
    if not current:
        return c.SCALING_UP, f"scaling {engine} up from zero"
    return c.STARTING, f"waiting for pods of {engine}"


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning ``old`` into ``new`` at the top level (``None`` removes a key)."""
    patch = {key: value for key, value in new.items() if old.get(key) != value}
    patch.update({key: None for key in old if key not in new and old[key] is not None})
    return patch


def _session_patch(
    session: SessionView, desired: dict[str, Any], ready: dict[str, Any], now: str
) -> dict[str, Any]:
    """The status patch to ``desired`` (phase, engine, pod, endpoint) and condition ``ready``."""
    patch = {k: v for k, v in desired.items() if getattr(session, k) != v}
    conds, changed = c.set_condition(list(session.conditions), ready, now)
    if changed:
        patch["conditions"] = conds
    return patch


def plan_engine(
    *,
    name: str,
    generation: int | None,
    scaling: Scaling | None,
    sessions: Iterable[SessionView],
    pods: Iterable[PodView],
    current_replicas: int,
    status: Mapping[str, Any],
    now: dt.datetime,
    error: str | None = None,
    rollout: bool = False,
) -> EnginePlan:
    """Decide replicas, session assignments and statuses, expiries and the engine's status.

    ``error`` is a permanent problem of the engine (an invalid spec, so ``scaling`` may be
    ``None``): its sessions fail and its replicas are left alone until it is fixed.

    A session stays on its pod while that pod is ready: pinning spreads load, it is not where
    the conversation lives (the history store is). A session whose pod is gone, terminating
    or not ready moves to the least loaded ready pod with room; with none it keeps a pod that
    is only not ready (it may come back) and waits.

    Pods are marked busy or idle as their sessions come and go (``pod_marks``). Before
    replicas drop, or a pending ``rollout`` (a new pod template) goes out, every pod's
    deletion cost must equal its session count, so the ReplicaSet removes the emptiest pods:
    until the pods show it, the plan writes the costs and keeps the current replicas
    (``rollout_ready`` is false).
    """
    now_s = format_time(now)
    sessions = [s for s in sessions if not s.deleting]
    expire = sorted(s.name for s in sessions if s.phase == EXPIRED or is_expired(s, now))
    live = sorted((s for s in sessions if s.name not in expire), key=lambda s: (s.created, s.name))
    usable = {p.name: p for p in pods if p.state not in (POD_TERMINATING, POD_FAILED)}
    ready = sorted((p for p in usable.values() if p.state == POD_READY), key=lambda p: p.name)
    load = Counter(s.pod for s in live if s.pod in usable)

    idle_since = None if live else (parse_time(status.get("idleSince")) or now)
    idle_expired = (
        idle_since is not None
        and scaling is not None
        and ((now - idle_since).total_seconds() >= scaling.idle_timeout)
    )
    if error or scaling is None:
        error = error or "no scaling parameters"
        replicas, waiting = current_replicas, (c.ENGINE_FAILED, error)
    else:
        replicas = desired_replicas(len(live), len(load), scaling, current_replicas, idle_expired)
        waiting = waiting_reason(usable.values(), scaling, name, current_replicas)

    patches: dict[str, dict[str, Any]] = {}
    reassigned: set[str] = set()
    for session in live:
        pod = usable.get(session.pod or "")
        if (pod is None or pod.state != POD_READY) and scaling is not None and not error:
            free = [p for p in ready if load[p.name] < scaling.per_replica]
            better = min(free, key=lambda p: (load[p.name], p.name), default=None)
            if better is not None:
                if pod is not None:
                    load[pod.name] -= 1
                pod = better
                load[pod.name] += 1
        desired: dict[str, Any] = {"engine": name, "pod": pod.name if pod else None}
        if error:
            desired.update(phase=FAILED, endpoint=None)
            cond = c.condition(c.READY, False, c.ENGINE_FAILED, error)
        elif pod is not None and pod.state == POD_READY:
            desired.update(phase=ACTIVE, endpoint=pod.endpoint)
            cond = c.condition(c.READY, True, c.ASSIGNED, f"pinned to pod {pod.name}")
        elif pod is not None:
            desired.update(phase=PENDING, endpoint=None)
            cond = c.condition(c.READY, False, pod.state, f"pod {pod.name}: {pod.message}")
        else:
            desired.update(phase=PENDING, endpoint=None)
            cond = c.condition(c.READY, False, *waiting)
        patch = _session_patch(session, desired, cond, now_s)
        if patch:
            patches[session.name] = patch
        if "pod" in patch and patch["pod"] is not None:
            reassigned.add(session.name)

    for session in sessions:
        if session.name in expire and session.phase != EXPIRED:
            idle = int((now - _last_seen(session)).total_seconds())
            cond = c.condition(
                c.READY, False, c.EXPIRED, f"idle {idle}s, timeout {session.timeout_seconds}s"
            )
            patches[session.name] = _session_patch(
                session, {"phase": EXPIRED, "engine": name}, cond, now_s
            )

    flips, costs = {}, {}
    for pod in usable.values():
        sessions_on_pod = load[pod.name]
        if pod.busy != (sessions_on_pod > 0):
            flips[pod.name] = pod_marks(sessions_on_pod)
        if pod.cost != sessions_on_pod:
            costs[pod.name] = pod_marks(sessions_on_pod)
    shrinking = replicas < current_replicas and not error
    pod_patches = {**flips, **costs} if shrinking or rollout else flips
    if shrinking and costs:
        replicas = current_replicas

    new_status = _engine_status(
        name, generation, status, live, ready, replicas, waiting, idle_since, now, error
    )
    return EnginePlan(
        replicas=replicas,
        status_patch=status_patch(status, new_status),
        session_patches=patches,
        reassigned=reassigned,
        expire=expire,
        delete_engine=bool(
            scaling is not None
            and not error
            and idle_expired
            and scaling.idle_policy == "Delete"
            and scaling.deletable
        ),
        pod_patches=pod_patches,
        rollout_ready=not costs,
    )


def _engine_status(
    name: str,
    generation: int | None,
    old: Mapping[str, Any],
    live: list[SessionView],
    ready: list[PodView],
    replicas: int,
    waiting: tuple[str, str],
    idle_since: dt.datetime | None,
    now: dt.datetime,
    error: str | None,
) -> dict[str, Any]:
    if error:
        phase, cond = ENGINE_FAILED, c.condition(c.READY, False, c.INVALID_SPEC, error)
    elif ready:
        phase = ENGINE_READY if live else ENGINE_IDLE
        message = f"{len(ready)}/{replicas} replicas ready"
        cond = c.condition(c.READY, True, c.REPLICAS_READY, message)
    elif replicas == 0:
        phase, cond = ENGINE_SCALED_DOWN, c.condition(c.READY, False, c.SCALED_DOWN, "no sessions")
    else:
        phase = ENGINE_FAILED if waiting[0] in _FAILING else ENGINE_PENDING
        cond = c.condition(c.READY, False, *waiting)
    now_s = format_time(now)
    cond["observedGeneration"] = generation
    conds, _ = c.set_condition(old.get("conditions"), cond, now_s)
    reconciled = (
        c.condition(c.RECONCILED, False, c.INVALID_SPEC, error, generation)
        if error
        else c.condition(c.RECONCILED, True, c.SUCCEEDED, f"{name} reconciled", generation)
    )
    conds, _ = c.set_condition(conds, reconciled, now_s)
    status: dict[str, Any] = {
        "phase": phase,
        "replicas": replicas,
        "readyReplicas": len(ready),
        "sessions": len(live),
        READY_ENDPOINTS: ready_endpoints(ready),
        "observedGeneration": generation,
        "conditions": conds,
    }
    newest = max((s.created for s in live), default=None)
    last_session = format_time(newest) if newest else old.get("lastSessionTime")
    if last_session:
        status["lastSessionTime"] = last_session
    if idle_since is not None:
        status["idleSince"] = format_time(idle_since)
    return status
