"""A fake kubelet (and Deployment controller and scheduler) running engine pods as processes.

It watches Deployments through the API like a cluster's controllers do: for each desired
replica it creates a Pod (template labels, ``pod-template-hash``, owner reference to the
Deployment), "schedules" it against a pretend node (GPU capacity summed over the pod's
containers, node labels) and binds it there (``pods/binding``), starts the first container as
``python -m tutor_engine --host 127.A.B.N --port <containerPort>`` with its environment
(secrets resolved through the API) on its own loopback address, probes ``/readyz`` (with the
container's ``readinessProbe`` thresholds) and reports phase, podIP, conditions and container
states back on the Pod's status, and replicas on the Deployment's status.

Which pods go, as the real controllers decide it (``deletion_order``, ``rollout_step``):

- scale-down removes pods in the ReplicaSet controller's ranking (``ActivePodsWithRanks`` in
  kubernetes ``pkg/controller/controller_utils.go``): unscheduled before scheduled, Pending
  before Running, not ready before ready, lower ``controller.kubernetes.io/pod-deletion-cost``
  first, ready for less time first, more restarts first, newer first; with
  ``LogarithmicScaleDown`` (on by default in Kubernetes) times in the same power-of-two age
  bucket tie, and ties go by uid — effectively at random;
- a pod-template change rolls the pods as the Deployment's strategy says: ``Recreate``, or
  ``RollingUpdate`` with its ``maxSurge``/``maxUnavailable`` (default 25%/25%), creating new
  pods and removing old ones (in the same ranking) only while availability allows;
- the pods it decides on are read fresh from the API (a real controller's informer may lag).

A deleted pod (``deletionTimestamp``) keeps running through its grace period like on a real
node: its process gets SIGTERM (SIGKILL after ``terminationGracePeriodSeconds``), and then the
kubelet deletes the Pod for good (``gracePeriodSeconds=0``). Pods in a namespace that it did
not create are not run.

Other containers (the vLLM sidecar) run nothing — vLLM needs a GPU — and are reported running
and ready as soon as the pod starts; the engine's own readiness decides the pod's.

An engine that exits is restarted with a growing back-off, shown as ``CrashLoopBackOff``; its
``lastState.terminated`` carries the exit code and the termination message: the file the
process wrote at ``ENGINE_TERMINATION_LOG`` (a kubelet mounts one at ``terminationMessagePath``;
here it is a file of ``log_dir``), or with ``FallbackToLogsOnError`` and a failure, the tail of
its output.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import math
import os
import pathlib
import random
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from .kube_emulator import ADMIN_TOKEN
from .paths import rest_path

log = logging.getLogger(__name__)
HASH_LABEL = "pod-template-hash"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
NODE = "fake-node"
PROBE_INTERVAL = 0.2
MESSAGE_BYTES = 4096  # a kubelet keeps at most 4096 bytes of a termination message
LOG_LINES = 80  # and, falling back to the logs, their last 80 lines


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def template_hash(template: dict[str, Any]) -> str:
    """A short stable hash of a pod template (what a ReplicaSet name carries)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


# -- what the controllers decide (pure functions of Pod objects) ------------------------------


def _time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def is_ready(pod: dict[str, Any]) -> bool:
    """The pod's Ready condition is True."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _ready_time(pod: dict[str, Any]) -> dt.datetime | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            return _time(condition.get("lastTransitionTime"))
    return None


def _deletion_cost(pod: dict[str, Any]) -> int:
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(DELETION_COST, "0")
    try:
        return int(value)
    except ValueError:
        return 0


def _restarts(pod: dict[str, Any]) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return max((int(s.get("restartCount", 0)) for s in statuses), default=0)


_PHASE_ORDINAL = {"Pending": 0, "Unknown": 1, "Running": 2}


def _after_or_zero(t1: dt.datetime | None, t2: dt.datetime | None) -> bool:
    if t1 is None or t2 is None:
        return t1 is None
    return t1 > t2


def _log_rank_diff(t1: dt.datetime, t2: dt.datetime, now: dt.datetime) -> int:
    def rank(t: dt.datetime) -> int:
        nanoseconds = (now - t).total_seconds() * 1e9
        return int(math.log2(nanoseconds)) if nanoseconds > 0 else -1

    return rank(t1) - rank(t2)


def _less(a: dict[str, Any], b: dict[str, Any], now: dt.datetime | None, logarithmic: bool) -> bool:
    """``ActivePodsWithRanks.Less`` for pods of one node (so equal "doubled-up" ranks)."""
    node_a, node_b = a["spec"].get("nodeName") or "", b["spec"].get("nodeName") or ""
    if node_a != node_b and (not node_a or not node_b):
        return not node_a
    phase_a = _PHASE_ORDINAL.get((a.get("status") or {}).get("phase", ""), 0)
    phase_b = _PHASE_ORDINAL.get((b.get("status") or {}).get("phase", ""), 0)
    if phase_a != phase_b:
        return phase_a < phase_b
    if is_ready(a) != is_ready(b):
        return not is_ready(a)
    if _deletion_cost(a) != _deletion_cost(b):
        return _deletion_cost(a) < _deletion_cost(b)
    uid_a, uid_b = a["metadata"].get("uid", ""), b["metadata"].get("uid", "")
    if is_ready(a) and is_ready(b):
        ready_a, ready_b = _ready_time(a), _ready_time(b)
        if ready_a != ready_b:
            if not logarithmic or now is None or ready_a is None or ready_b is None:
                return _after_or_zero(ready_a, ready_b)
            diff = _log_rank_diff(ready_a, ready_b, now)
            return uid_a < uid_b if diff == 0 else diff < 0
    if _restarts(a) != _restarts(b):
        return _restarts(a) > _restarts(b)
    created_a = _time(a["metadata"].get("creationTimestamp"))
    created_b = _time(b["metadata"].get("creationTimestamp"))
    if created_a != created_b:
        if not logarithmic or now is None or created_a is None or created_b is None:
            return _after_or_zero(created_a, created_b)
        diff = _log_rank_diff(created_a, created_b, now)
        return uid_a < uid_b if diff == 0 else diff < 0
    return False


def deletion_order(
    pods: list[dict[str, Any]], now: dt.datetime | None = None, logarithmic: bool = True
) -> list[dict[str, Any]]:
    """Pods in the order a ReplicaSet deletes them (first: the first to go)."""

    def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
        return -1 if _less(a, b, now, logarithmic) else 1 if _less(b, a, now, logarithmic) else 0

    return sorted(pods, key=functools.cmp_to_key(compare))


def _scaled(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = int(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


def fenceposts(strategy: dict[str, Any], desired: int) -> tuple[int, int]:
    """``maxSurge`` and ``maxUnavailable`` of a RollingUpdate strategy, as pod counts."""
    rolling = (strategy or {}).get("rollingUpdate") or {}
    surge = _scaled(rolling.get("maxSurge", "25%"), desired, True)
    unavailable = _scaled(rolling.get("maxUnavailable", "25%"), desired, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # as the Deployment controller's ResolveFenceposts
    return surge, unavailable


def rollout_step(
    desired: int,
    new: list[dict[str, Any]],
    old: list[dict[str, Any]],
    strategy: dict[str, Any] | None = None,
    *,
    old_terminating: int = 0,
    now: dt.datetime | None = None,
    logarithmic: bool = True,
) -> tuple[int, list[dict[str, Any]]]:
    """One step of the Deployment and ReplicaSet controllers: (pods to create, pods to delete).

    ``new`` and ``old`` are the active (not deleting) pods of the current and of older pod
    templates; ``old_terminating`` counts old pods still shutting down (``Recreate`` waits).
    """
    strategy = strategy or {}
    order = functools.partial(deletion_order, now=now, logarithmic=logarithmic)

    def scale(pods: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
        if len(pods) < desired:
            return desired - len(pods), []
        return 0, order(pods)[: len(pods) - desired]

    if not old:
        return (0, []) if old_terminating and strategy.get("type") == "Recreate" else scale(new)
    if strategy.get("type") == "Recreate":
        return 0, list(old)
    surge, unavailable = fenceposts(strategy, desired)
    creates, victims = scale(new)
    creates = max(0, min(creates, desired + surge - len(new) - len(old)))
    min_available = desired - unavailable
    new_unavailable = len(new) - sum(map(is_ready, new))
    budget = len(new) + len(old) - min_available - new_unavailable
    ranked = order(old)
    unhealthy = [p for p in ranked if not is_ready(p)][: max(budget, 0)]
    budget -= len(unhealthy)
    available = sum(map(is_ready, new)) + sum(map(is_ready, old))
    healthy = [p for p in ranked if is_ready(p)][: max(min(budget, available - min_available), 0)]
    return creates, victims + unhealthy + healthy


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("fake kubelet: a pod's run failed", exc_info=task.exception())


@dataclasses.dataclass
class ReadinessProbe:
    """A container's readinessProbe as a kubelet applies it (the API server's defaults
    without one): readiness changes after ``failures`` failed or ``successes`` passed probes
    in a row, each waiting at most ``timeout`` seconds."""

    timeout: float = 1.0
    failures: int = 3
    successes: int = 1
    ready: bool = False
    streak: int = 0  # probes in a row whose result disagrees with ``ready``

    @classmethod
    def of(cls, container: dict[str, Any]) -> ReadinessProbe:
        """The probe ``container`` declares, not ready yet."""
        spec = container.get("readinessProbe") or {}
        return cls(
            timeout=float(spec.get("timeoutSeconds", cls.timeout)),
            failures=int(spec.get("failureThreshold", cls.failures)),
            successes=int(spec.get("successThreshold", cls.successes)),
        )

    def observe(self, ok: bool) -> bool:
        """Count one probe's result; whether readiness changed with it."""
        self.streak = 0 if ok == self.ready else self.streak + 1
        if self.streak < (self.successes if ok else self.failures):
            return False
        self.ready, self.streak = ok, 0
        return True


@dataclasses.dataclass
class PodRun:
    """One pod this kubelet runs: its identity, process and readiness."""

    name: str
    uid: str
    deployment: str
    template_hash: str
    gpus: int
    grace: float = 30.0
    ip: str | None = None
    ready: bool = False
    ready_since: str | None = None
    scheduled: bool = False
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    stopping: asyncio.Task[None] | None = None
    log_path: pathlib.Path | None = None
    sidecars: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # their statuses


class FakeKubelet:
    """Runs engine Deployments of one namespace as local processes; see the module docstring.

    ``gpus`` is the pretend node's GPU capacity (``None``: unlimited), ``node_labels`` its
    labels (for nodeSelector), ``pull_seconds`` how long "pulling the image" takes, ``token``
    the bearer token it uses (the controllers' and kubelet's identity: an administrator's),
    ``logarithmic_scale_down`` whether pod ages are compared in power-of-two buckets, as
    Kubernetes does by default.
    """

    def __init__(
        self,
        api_url: str,
        namespace: str,
        *,
        gpus: int | None = None,
        gpu_resource: str = "nvidia.com/gpu",
        node_labels: dict[str, str] | None = None,
        pull_seconds: float = 0.0,
        log_dir: pathlib.Path | None = None,
        token: str | None = ADMIN_TOKEN,
        logarithmic_scale_down: bool = True,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.namespace = namespace
        self.gpus = gpus
        self.gpu_resource = gpu_resource
        self.node_labels = node_labels or {}
        self.pull_seconds = pull_seconds
        self.log_dir = log_dir or pathlib.Path(tempfile.mkdtemp(prefix="fake-kubelet-"))
        self.token = token
        self.logarithmic_scale_down = logarithmic_scale_down
        self.pods: dict[str, PodRun] = {}
        self._subnet = f"127.{random.randint(20, 250)}.{random.randint(0, 255)}"
        self._free_hosts = list(range(2, 255))
        self._deployments: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-kubelet")

    # -- lifecycle (from the test's thread) --

    def start(self) -> FakeKubelet:
        """Start watching in a background thread."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Terminate every engine process and stop the thread."""
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self) -> str:
        """Every engine process's output so far (for failure reports)."""
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def processes(self) -> dict[str, int]:
        """Pod name -> pid of the engine processes alive now."""
        return {
            name: run.process.pid
            for name, run in list(self.pods.items())
            if run.process is not None and run.process.returncode is None
        }

    async def _start(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None), headers=headers
        )
        self._tasks = [
            asyncio.create_task(self._watch(self._path("deployments"), self._on_deployment)),
            asyncio.create_task(
                self._watch(self._path("pods"), self._on_pod, self._on_pods_listed)
            ),
        ]

    async def _stop(self) -> None:
        for task in [*self._tasks, *self._workers.values()]:
            task.cancel()
        for run in list(self.pods.values()):
            await self._terminate(run)
        await asyncio.gather(*self._tasks, *self._workers.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- API --

    def _path(self, plural: str, name: str | None = None) -> str:
        return rest_path(plural, self.namespace, name)

    async def _api(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        assert self._session is not None
        headers = {"Content-Type": content_type}
        data = None if body is None else json.dumps(body)
        async with self._session.request(
            method, self.api_url + path, data=data, headers=headers, params=params
        ) as response:
            return response.status, await response.json(content_type=None)

    async def _patch_status(self, path: str, status: dict[str, Any]) -> bool:
        code, _ = await self._api(
            "PATCH", f"{path}/status", {"status": status}, "application/merge-patch+json"
        )
        return code == 200

    async def _stream(self, path: str, rv: str) -> AsyncIterator[dict[str, Any]]:
        assert self._session is not None
        params = {
            "watch": "true",
            "resourceVersion": rv,
            "timeoutSeconds": "60",
            "allowWatchBookmarks": "true",
        }
        async with self._session.get(self.api_url + path, params=params) as response:
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)

    async def _watch(self, path: str, handler: Any, listed: Any = None) -> None:
        while True:
            try:
                code, listing = await self._api("GET", path)
                if code != 200:
                    raise RuntimeError(f"GET {path}: {code} {listing.get('message')}")
                rv = listing["metadata"]["resourceVersion"]
                if listed is not None:
                    await listed(listing["items"])
                for obj in listing["items"]:
                    await handler("ADDED", obj)
                while True:
                    async for event in self._stream(path, rv):
                        if event["type"] == "ERROR":  # 410 Gone: re-list
                            raise RuntimeError(event["object"].get("message"))
                        rv = event["object"]["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            await handler(event["type"], event["object"])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("fake kubelet: watching %s failed; re-listing", path, exc_info=True)
                await asyncio.sleep(0.2)

    # -- the Deployment and ReplicaSet controllers --

    async def _on_deployment(self, type_: str, deployment: dict[str, Any]) -> None:
        name = deployment["metadata"]["name"]
        if type_ == "DELETED":
            self._deployments.pop(name, None)  # the garbage collector deletes its pods
            return
        self._deployments[name] = deployment
        self._kick(name)

    def _kick(self, name: str) -> None:
        """Reconcile a Deployment soon; requests while one runs fold into one more pass."""
        self._dirty.add(name)
        worker = self._workers.get(name)
        if worker is None or worker.done():
            self._workers[name] = asyncio.create_task(self._work(name))

    async def _work(self, name: str) -> None:
        while name in self._dirty:
            self._dirty.discard(name)
            try:
                await self._reconcile(name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("fake kubelet: reconciling %s failed", name, exc_info=True)
                await asyncio.sleep(0.2)
                self._dirty.add(name)

    async def _reconcile(self, name: str) -> None:
        deployment = self._deployments.get(name)
        if deployment is None:
            return
        code, listing = await self._api("GET", self._path("pods"))
        if code != 200:
            raise RuntimeError(f"cannot list pods: {listing.get('message')}")
        uid = deployment["metadata"]["uid"]
        pods = [
            p
            for p in listing["items"]
            if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])
        ]
        wanted_hash = template_hash(deployment["spec"]["template"])
        finished = ("Succeeded", "Failed")
        active = [
            p
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in finished
        ]
        new = [p for p in active if p["metadata"]["labels"].get(HASH_LABEL) == wanted_hash]
        old = [p for p in active if p not in new]
        terminating = [p for p in pods if p not in active]
        old_terminating = sum(
            p["metadata"]["labels"].get(HASH_LABEL) != wanted_hash for p in terminating
        )
        desired = int(deployment["spec"].get("replicas", 1))
        creates, victims = rollout_step(
            desired,
            new,
            old,
            deployment["spec"].get("strategy"),
            old_terminating=old_terminating,
            now=dt.datetime.now(dt.UTC),
            logarithmic=self.logarithmic_scale_down,
        )
        for pod in victims:
            await self._api("DELETE", self._path("pods", pod["metadata"]["name"]))
        for _ in range(creates):
            await self._create_pod(deployment, wanted_hash)
        ready = sum(map(is_ready, active))
        status = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": len(active),
            "updatedReplicas": len(new),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(desired - ready, 0) or None,
        }
        await self._patch_status(self._path("deployments", name), status)

    async def _create_pod(self, deployment: dict[str, Any], wanted_hash: str) -> None:
        meta, template = deployment["metadata"], deployment["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": f"{meta['name']}-{wanted_hash[:5]}-",
                "labels": {**template["metadata"].get("labels", {}), HASH_LABEL: wanted_hash},
                "annotations": dict(template["metadata"].get("annotations", {})),
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": copy.deepcopy(template["spec"]),
        }
        code, created = await self._api("POST", self._path("pods"), pod)
        if code != 201:
            log.error("fake kubelet: cannot create a pod: %s", created)
            return
        gpus = sum(
            int((c.get("resources") or {}).get("limits", {}).get(self.gpu_resource, 0))
            for c in pod["spec"]["containers"]
        )
        grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        run = PodRun(
            created["metadata"]["name"],
            created["metadata"]["uid"],
            meta["name"],
            wanted_hash,
            gpus,
            grace,
        )
        self.pods[run.name] = run
        run.task = asyncio.create_task(self._run_pod(run, created))
        run.task.add_done_callback(_log_failure)

    # -- the kubelet --

    async def _on_pods_listed(self, pods: list[dict[str, Any]]) -> None:
        """After a re-list: pods deleted while the watch was down are gone for good."""
        alive = {p["metadata"]["uid"] for p in pods}
        for run in list(self.pods.values()):
            if run.uid not in alive:
                await self._terminate(run)
                self._kick(run.deployment)

    async def _on_pod(self, type_: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        run = self.pods.get(meta["name"])
        if run is not None and run.uid == meta["uid"]:
            if type_ == "DELETED":
                await self._terminate(run)  # deleted for good by someone else
            elif meta.get("deletionTimestamp") and run.stopping is None:
                run.stopping = asyncio.create_task(self._shut_down(run))
        for owner in meta.get("ownerReferences") or []:
            if owner.get("kind") == "Deployment" and owner.get("name") in self._deployments:
                self._kick(owner["name"])

    async def _shut_down(self, run: PodRun) -> None:
        """A deleted pod: stop its process within the grace period, then remove the Pod."""
        await self._terminate(run, keep=True)
        path = self._path("pods", run.name)
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": run.uid}}
        await self._api("DELETE", path, body, params={"gracePeriodSeconds": "0"})
        self.pods.pop(run.name, None)

    def _schedulable(self, run: PodRun, spec: dict[str, Any]) -> str | None:
        selector = spec.get("nodeSelector") or {}
        if any(self.node_labels.get(k) != v for k, v in selector.items()):
            return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
        if self.gpus is not None:
            used = sum(r.gpus for r in self.pods.values() if r.scheduled and r is not run)
            if used + run.gpus > self.gpus:
                return f"0/1 nodes are available: 1 Insufficient {self.gpu_resource}."
        return None

    async def _env(self, container: dict[str, Any]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "TUTOR_"))}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            ref = item["valueFrom"]["secretKeyRef"]
            code, secret = await self._api("GET", self._path("secrets", ref["name"]))
            if code != 200 or ref["key"] not in (secret.get("data") or {}):
                raise LookupError(f'secret "{ref["name"]}" or its key "{ref["key"]}" not found')
            env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        return env

    async def _run_pod(self, run: PodRun, pod: dict[str, Any]) -> None:
        path = self._path("pods", run.name)
        spec = pod["spec"]
        container, *sidecars = spec["containers"]
        while reason := self._schedulable(run, spec):
            unscheduled = {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": reason,
            }
            if not await self._patch_status(
                path, {"phase": "Pending", "conditions": [unscheduled]}
            ):
                return
            await asyncio.sleep(0.5)
        run.scheduled = True
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": run.name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
        }
        code, _ = await self._api("POST", f"{path}/binding", binding)
        if code != 201:
            return
        base = {"phase": "Pending", "hostIP": "127.0.0.1"}
        scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}
        creating = {"reason": "ContainerCreating"}
        statuses = [self._container(c, "waiting", creating) for c in spec["containers"]]
        await self._patch_status(
            path, {**base, "conditions": [scheduled], "containerStatuses": statuses}
        )
        await asyncio.sleep(self.pull_seconds)
        while True:
            try:
                env = await self._env(container)
                break
            except LookupError as exc:
                waiting = {"reason": "CreateContainerConfigError", "message": str(exc)}
                status = {"containerStatuses": [self._container(container, "waiting", waiting)]}
                await self._patch_status(path, status)
                await asyncio.sleep(1.0)
        run.ip = f"{self._subnet}.{self._free_hosts.pop(0)}"
        port = container["ports"][0]["containerPort"]
        started = _now()
        run.sidecars = [
            self._container(c, "running", {"startedAt": started}, ready=True) for c in sidecars
        ]
        restarts, last_state = 0, None
        while True:
            termination = self.log_dir / f"{run.name}.termination"
            termination.unlink(missing_ok=True)
            env["ENGINE_TERMINATION_LOG"] = str(termination)
            await self._start_process(run, port, env)
            running = self._container(
                container, "running", {"startedAt": _now()}, restarts, last_state=last_state
            )
            await self._patch_status(
                path,
                {
                    "phase": "Running",
                    "podIP": run.ip,
                    "podIPs": [{"ip": run.ip}],
                    "hostIP": "127.0.0.1",
                    "startTime": started,
                    "conditions": self._conditions(scheduled, run),
                    "containerStatuses": [running, *run.sidecars],
                },
            )
            await self._probe(run, path, port, container, restarts, last_state)
            restarts += 1
            last_state = self._terminated(run, container, termination)
            delay = min(5.0, 0.5 * restarts)
            crash = {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {delay:g}s restarting failed container={container['name']}"
                f" pod={run.name}_{self.namespace}",
            }
            state = self._container(container, "waiting", crash, restarts, last_state=last_state)
            await self._patch_status(
                path,
                {
                    "conditions": self._conditions(scheduled, run),
                    "containerStatuses": [state, *run.sidecars],
                },
            )
            await asyncio.sleep(delay)

    def _terminated(
        self, run: PodRun, container: dict[str, Any], termination: pathlib.Path
    ) -> dict[str, Any]:
        """``lastState`` of an exited engine: exit code and termination message."""
        assert run.process is not None
        code = run.process.returncode
        message = termination.read_bytes()[:MESSAGE_BYTES] if termination.exists() else b""
        fallback = container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        if not message and fallback and code and run.log_path is not None:
            lines = run.log_path.read_bytes().splitlines()[-LOG_LINES:]
            message = b"\n".join(lines)[-MESSAGE_BYTES:]
        detail = {
            "exitCode": code if code >= 0 else 128 - code,  # killed by a signal: 128 + signal
            "reason": "Completed" if code == 0 else "Error",
            "finishedAt": _now(),
        }
        if message:
            detail["message"] = message.decode(errors="replace")
        return {"terminated": detail}

    async def _start_process(self, run: PodRun, port: int, env: dict[str, str]) -> None:
        run.log_path = self.log_dir / f"{run.name}.log"
        with run.log_path.open("ab") as out:
            run.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tutor_engine",
                "--host",
                str(run.ip),
                "--port",
                str(port),
                env=env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )

    async def _probe(
        self,
        run: PodRun,
        path: str,
        port: int,
        container: dict[str, Any],
        restarts: int,
        last_state: dict[str, Any] | None,
    ) -> None:
        """Probe /readyz until the process exits, reporting each readiness change.

        As a kubelet does, with the container's ``readinessProbe`` thresholds: each probe
        waits ``timeoutSeconds``, and readiness changes after ``failureThreshold`` failures
        or ``successThreshold`` successes in a row (``periodSeconds`` is ``PROBE_INTERVAL``
        here, so tests need not wait seconds between probes)."""
        assert self._session is not None and run.process is not None
        url = f"http://{run.ip}:{port}/readyz"
        probe = ReadinessProbe.of(container)
        scheduled = {"type": "PodScheduled", "status": "True"}
        while run.process.returncode is None:
            try:
                timeout = aiohttp.ClientTimeout(total=probe.timeout)
                async with self._session.get(url, timeout=timeout) as response:
                    ok, why = response.status == 200, f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                ok, why = False, type(exc).__name__
            if probe.observe(ok):
                if not ok:
                    log.info("fake kubelet: pod %s not ready (readiness probe: %s)", run.name, why)
                self._set_ready(run, ok)
                started = {"startedAt": _now()}
                state = self._container(container, "running", started, restarts, ok, last_state)
                status = {
                    "conditions": self._conditions(scheduled, run),
                    "containerStatuses": [state, *run.sidecars],
                }
                await self._patch_status(path, status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.process.wait(), PROBE_INTERVAL)
        if run.ready:
            self._set_ready(run, False)

    @staticmethod
    def _set_ready(run: PodRun, ready: bool) -> None:
        run.ready, run.ready_since = ready, _now()

    @staticmethod
    def _container(
        container: dict[str, Any],
        state: str,
        detail: dict[str, Any],
        restarts: int = 0,
        ready: bool = False,
        last_state: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        status = {
            "name": container["name"],
            "image": container.get("image", ""),
            "ready": ready,
            "started": state == "running",
            "restartCount": restarts,
            "state": {state: detail},
        }
        if last_state:
            status["lastState"] = last_state
        return status

    @staticmethod
    def _conditions(scheduled: dict[str, Any], run: PodRun) -> list[dict[str, Any]]:
        flag = "True" if run.ready else "False"
        since = run.ready_since or _now()
        return [
            scheduled,
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": since},
            {"type": "Ready", "status": flag, "lastTransitionTime": since},
        ]

    async def _terminate(self, run: PodRun, keep: bool = False) -> None:
        """Stop a pod's process (SIGTERM, then SIGKILL after its grace period) and, unless
        ``keep``, forget the pod (its GPU and address are free again either way)."""
        if keep:
            if run.name not in self.pods:
                return
        elif self.pods.pop(run.name, None) is None:
            return
        if run.task is not None and run.task is not asyncio.current_task():
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run.task
        process = run.process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), max(min(run.grace, 30.0), 0.1))
            except TimeoutError:
                process.kill()
                await process.wait()
        run.scheduled = False
        if run.ip:
            self._free_hosts.append(int(run.ip.rsplit(".", 1)[1]))
            run.ip = None
        if not keep and run.stopping is not None and run.stopping is not asyncio.current_task():
            run.stopping.cancel()
