"""A fake kubelet (and Deployment controller) that runs engine pods as local processes.

It watches Deployments through the API like a cluster's controllers do: for each desired
replica it creates a Pod (template labels, owner reference to the Deployment), "schedules" it
against a pretend node (GPU capacity summed over the pod's containers, node labels), starts
the first container as ``python -m tutor_engine --host 127.A.B.N --port <containerPort>`` with
its environment (secrets resolved through the API) on its own loopback address, probes
``/readyz`` and reports phase, podIP, conditions and container states back on the Pod's
status, and replicas on the Deployment's status. Scale-down deletes the pods least worth
keeping; a deleted Pod's process is terminated. Pod-template changes replace the pods.

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
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import pathlib
import random
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

log = logging.getLogger(__name__)
DEPLOYMENTS = "/apis/apps/v1/namespaces/{ns}/deployments"
PODS = "/api/v1/namespaces/{ns}/pods"
HASH_LABEL = "pod-template-hash"
PROBE_INTERVAL = 0.2
MESSAGE_BYTES = 4096  # a kubelet keeps at most 4096 bytes of a termination message
LOG_LINES = 80  # and, falling back to the logs, their last 80 lines


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def template_hash(template: dict[str, Any]) -> str:
    """A short stable hash of a pod template (what a ReplicaSet name carries)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


@dataclasses.dataclass
class PodRun:
    """One pod this kubelet runs: its identity, process and readiness."""

    name: str
    deployment: str
    template_hash: str
    gpus: int
    ip: str | None = None
    ready: bool = False
    scheduled: bool = False
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    log_path: pathlib.Path | None = None
    sidecars: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # their statuses


class FakeKubelet:
    """Runs engine Deployments of one namespace as local processes; see the module docstring.

    ``gpus`` is the pretend node's GPU capacity (``None``: unlimited), ``node_labels`` its
    labels (for nodeSelector), ``pull_seconds`` how long "pulling the image" takes.
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
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.namespace = namespace
        self.gpus = gpus
        self.gpu_resource = gpu_resource
        self.node_labels = node_labels or {}
        self.pull_seconds = pull_seconds
        self.log_dir = log_dir or pathlib.Path(tempfile.mkdtemp(prefix="fake-kubelet-"))
        self.pods: dict[str, PodRun] = {}
        self._subnet = f"127.{random.randint(20, 250)}.{random.randint(0, 255)}"
        self._free_hosts = list(range(2, 255))
        self._deployments: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
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
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        self._tasks = [
            asyncio.create_task(self._watch(DEPLOYMENTS, self._on_deployment)),
            asyncio.create_task(self._watch(PODS, self._on_pod)),
        ]

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for run in list(self.pods.values()):
            await self._terminate(run)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- API --

    async def _api(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        assert self._session is not None
        headers = {"Content-Type": content_type}
        data = None if body is None else json.dumps(body)
        async with self._session.request(
            method, self.api_url + path, data=data, headers=headers
        ) as response:
            return response.status, await response.json(content_type=None)

    async def _patch_status(self, path: str, status: dict[str, Any]) -> bool:
        code, _ = await self._api(
            "PATCH", f"{path}/status", {"status": status}, "application/merge-patch+json"
        )
        return code == 200

    async def _stream(self, path: str, rv: str) -> AsyncIterator[dict[str, Any]]:
        assert self._session is not None
        params = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": "60"}
        async with self._session.get(self.api_url + path, params=params) as response:
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)

    async def _watch(self, template: str, handler: Any) -> None:
        path = template.format(ns=self.namespace)
        while True:
            try:
                _, listing = await self._api("GET", path)
                rv = listing["metadata"]["resourceVersion"]
                for obj in listing["items"]:
                    await handler("ADDED", obj)
                while True:
                    async for event in self._stream(path, rv):
                        if event["type"] == "ERROR":
                            raise RuntimeError(event["object"].get("message"))
                        rv = event["object"]["metadata"]["resourceVersion"]
                        await handler(event["type"], event["object"])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fake kubelet: watching %s failed; re-listing", path)
                await asyncio.sleep(0.5)

    # -- the Deployment controller --

    async def _on_deployment(self, type_: str, deployment: dict[str, Any]) -> None:
        name = deployment["metadata"]["name"]
        if type_ == "DELETED":
            self._deployments.pop(name, None)
            return
        self._deployments[name] = deployment
        await self._reconcile(name)

    async def _reconcile(self, name: str) -> None:
        async with self._locks.setdefault(name, asyncio.Lock()):
            deployment = self._deployments.get(name)
            if deployment is None:
                return
            template = deployment["spec"]["template"]
            wanted_hash = template_hash(template)
            desired = int(deployment["spec"].get("replicas", 1))
            mine = [run for run in self.pods.values() if run.deployment == name]
            outdated = [run for run in mine if run.template_hash != wanted_hash]
            current = [run for run in mine if run.template_hash == wanted_hash]
            surplus = sorted(current, key=lambda r: (r.ready, r.name))  # not-ready pods go first
            for run in outdated + surplus[: max(0, len(current) - desired)]:
                await self._api("DELETE", f"{PODS.format(ns=self.namespace)}/{run.name}")
                await self._terminate(run)
            for _ in range(desired - len(current)):
                await self._create_pod(deployment, wanted_hash)
            await self._report(name)

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
            "spec": {**template["spec"], "nodeName": "fake-node"},
        }
        code, created = await self._api("POST", PODS.format(ns=self.namespace), pod)
        if code != 201:
            log.error("fake kubelet: cannot create a pod: %s", created)
            return
        gpus = sum(
            int((c.get("resources") or {}).get("limits", {}).get(self.gpu_resource, 0))
            for c in pod["spec"]["containers"]
        )
        run = PodRun(created["metadata"]["name"], meta["name"], wanted_hash, gpus)
        self.pods[run.name] = run
        run.task = asyncio.create_task(self._run_pod(run, created))

    async def _report(self, name: str) -> None:
        deployment = self._deployments.get(name)
        if deployment is None:
            return
        mine = [run for run in self.pods.values() if run.deployment == name]
        ready = sum(run.ready for run in mine)
        status = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": len(mine),
            "updatedReplicas": len(mine),
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        await self._patch_status(f"{DEPLOYMENTS.format(ns=self.namespace)}/{name}", status)

    # -- the kubelet --

    async def _on_pod(self, type_: str, pod: dict[str, Any]) -> None:
        run = self.pods.get(pod["metadata"]["name"])
        if run is not None and (type_ == "DELETED" or pod["metadata"].get("deletionTimestamp")):
            await self._terminate(run)
            await self._reconcile(run.deployment)

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
            code, secret = await self._api(
                "GET", f"/api/v1/namespaces/{self.namespace}/secrets/{ref['name']}"
            )
            if code != 200 or ref["key"] not in (secret.get("data") or {}):
                raise LookupError(f'secret "{ref["name"]}" or its key "{ref["key"]}" not found')
            env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        return env

    async def _run_pod(self, run: PodRun, pod: dict[str, Any]) -> None:
        path = f"{PODS.format(ns=self.namespace)}/{run.name}"
        spec = pod["spec"]
        container, *sidecars = spec["containers"]
        base = {"phase": "Pending", "hostIP": "127.0.0.1"}
        while reason := self._schedulable(run, spec):
            unscheduled = {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": reason,
            }
            if not await self._patch_status(path, {**base, "conditions": [unscheduled]}):
                return
            await asyncio.sleep(0.5)
        run.scheduled = True
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
                    "conditions": self._conditions(scheduled, False),
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
                    "conditions": self._conditions(scheduled, False),
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
        """Probe /readyz until the process exits, reporting each readiness change."""
        assert self._session is not None and run.process is not None
        url = f"http://{run.ip}:{port}/readyz"
        scheduled = {"type": "PodScheduled", "status": "True"}
        while run.process.returncode is None:
            try:
                timeout = aiohttp.ClientTimeout(total=2)
                async with self._session.get(url, timeout=timeout) as response:
                    ready = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ready = False
            if ready != run.ready:
                run.ready = ready
                started = {"startedAt": _now()}
                state = self._container(container, "running", started, restarts, ready, last_state)
                status = {
                    "conditions": self._conditions(scheduled, ready),
                    "containerStatuses": [state, *run.sidecars],
                }
                await self._patch_status(path, status)
                await self._report(run.deployment)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.process.wait(), PROBE_INTERVAL)
        if run.ready:
            run.ready = False
            await self._report(run.deployment)

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
    def _conditions(scheduled: dict[str, Any], ready: bool) -> list[dict[str, Any]]:
        flag = "True" if ready else "False"
        return [
            scheduled,
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": flag},
            {"type": "Ready", "status": flag},
        ]

    async def _terminate(self, run: PodRun) -> None:
        """Stop a pod's process (SIGTERM, then SIGKILL) and forget the pod."""
        if self.pods.pop(run.name, None) is None:
            return
        if run.task is not None and run.task is not asyncio.current_task():
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run.task
        process = run.process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        if run.ip:
            self._free_hosts.append(int(run.ip.rsplit(".", 1)[1]))
