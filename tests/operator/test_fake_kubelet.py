"""The fake kubelet: Deployments become engine processes whose state shows on the Pods."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest

from tests.support.cluster import ENGINE_KEY, NAMESPACE, KubeClient, wait_for
from tests.support.kube_emulator import RunningEmulator
from tests.support.kubelet import (
    FakeKubelet,
    ReadinessProbe,
    deletion_order,
    fenceposts,
    is_ready,
    rollout_step,
)

pytestmark = pytest.mark.timeout(90)


def deployment(replicas: int, gpus: int = 0, **pod_spec: object) -> dict:
    labels = {"app": "engine", "tutor.vts.dev/engine": "tutor-1"}
    env = [
        {"name": "ENGINE_TUTOR_ID", "value": "1"},
        {
            "name": "ENGINE_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "tutor-engine-key", "key": "api-key"}},
        },
    ]
    container = {
        "name": "engine",
        "image": "tutor-engine:test",
        "ports": [{"name": "http", "containerPort": 8000}],
        "env": env,
        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "tutor-1"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container], **pod_spec},
            },
        },
    }


def ready_pods(kube: KubeClient) -> list[dict]:
    pods = kube.list("pods", "tutor.vts.dev/engine=tutor-1")
    return [
        p
        for p in pods
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions", [])
        )
    ]


def test_replicas_run_as_processes_with_addresses_and_secrets(
    kube: KubeClient, kubelet: FakeKubelet
) -> None:
    kube.create("deployments", deployment(2)).raise_for_status()
    pods = wait_for(lambda: len(ready_pods(kube)) == 2 and ready_pods(kube), 30, "2 ready pods")
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2 and all(ip.startswith("127.") for ip in ips)
    owner = pods[0]["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "Deployment" and owner["name"] == "tutor-1"
    status = wait_for(
        lambda: (
            kube.get("deployments", "tutor-1").get("status", {}).get("readyReplicas") == 2
            and kube.get("deployments", "tutor-1")["status"]
        )
    )
    assert status["replicas"] == 2
    ip = sorted(ips)[0]
    assert httpx.get(f"http://{ip}:8000/readyz").json()["tutor_id"] == 1
    # The secret reached the engine: it refuses a wrong key and accepts the right one.
    assert (
        httpx.delete(f"http://{ip}:8000/sessions/x", headers={"X-Engine-Key": "no"}).status_code
        == 401
    )
    assert (
        httpx.delete(
            f"http://{ip}:8000/sessions/x", headers={"X-Engine-Key": ENGINE_KEY}
        ).status_code
        == 204
    )

    kube.patch("deployments", "tutor-1", {"spec": {"replicas": 1}})
    wait_for(
        lambda: len(kube.list("pods")) == 1 and len(kubelet.processes()) == 1, 20, "scale down"
    )
    kube.delete(
        "deployments", "tutor-1"
    )  # the emulator's GC removes the pods, the kubelet the processes
    wait_for(lambda: not kube.list("pods") and not kubelet.processes(), 20, "cascading deletion")


def test_pods_wait_for_a_gpu_and_a_matching_node(
    kube_api: RunningEmulator, kube: KubeClient
) -> None:
    with FakeKubelet(kube_api.url, NAMESPACE, gpus=1, node_labels={"pool": "gpu"}) as kubelet:
        kube.create("deployments", deployment(2, gpus=1, nodeSelector={"pool": "gpu"}))
        wait_for(lambda: len(ready_pods(kube)) == 1, 30, "one pod to run on the only GPU")

        def unschedulable(message: str) -> bool:
            return any(
                c["type"] == "PodScheduled" and c["status"] == "False" and message in c["message"]
                for p in kube.list("pods")
                for c in p.get("status", {}).get("conditions", [])
            )

        wait_for(lambda: unschedulable("Insufficient nvidia.com/gpu"), 10, "an unschedulable pod")
        running = kubelet.processes()
        assert len(running) == 1
        old_hash = ready_pods(kube)[0]["metadata"]["labels"]["pod-template-hash"]
        kube.patch(
            "deployments",
            "tutor-1",
            {"spec": {"template": {"spec": {"nodeSelector": {"pool": "cpu"}}}}},
        )
        wait_for(lambda: unschedulable("node affinity/selector"), 20, "no matching node")
        # RollingUpdate (25%/25% of 2: surge 1, unavailable 0) stalls: the new pod cannot run,
        # so the available old one is never taken down, as on a real cluster.
        status = wait_for(
            lambda: (
                (s := kube.get("deployments", "tutor-1")["status"]).get("updatedReplicas") and s
            ),
            10,
            "the new pod counted",
        )
        assert status["readyReplicas"] == 1 and kubelet.processes() == running
        # Recreate removes every old pod first, and nothing can run anymore.
        strategy = {"type": "Recreate", "rollingUpdate": None}
        kube.patch("deployments", "tutor-1", {"spec": {"strategy": strategy}})
        wait_for(lambda: not kubelet.processes(), 20, "the old pods to stop")
        wait_for(
            lambda: all(
                p["metadata"]["labels"]["pod-template-hash"] != old_hash for p in kube.list("pods")
            ),
            20,
            "only new pods",
        )


# -- which pods go: the ReplicaSet ranking and the Deployment's rollout ------------------------

NOW = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.UTC)


def at(seconds_ago: float) -> str:
    return (NOW - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def ranked_pod(
    name: str,
    *,
    node: str = "fake-node",
    phase: str = "Running",
    ready_for: float | None = 100,
    cost: int | None = None,
    restarts: int = 0,
    age: float = 200,
    uid: str | None = None,
) -> dict:
    conditions = [{"type": "Ready", "status": "False"}]
    if ready_for is not None:
        conditions = [{"type": "Ready", "status": "True", "lastTransitionTime": at(ready_for)}]
    annotations = {} if cost is None else {"controller.kubernetes.io/pod-deletion-cost": str(cost)}
    return {
        "metadata": {
            "name": name,
            "uid": uid or name,
            "creationTimestamp": at(age),
            "annotations": annotations,
        },
        "spec": {"nodeName": node},
        "status": {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [{"restartCount": restarts}],
        },
    }


def order(*pods: dict, logarithmic: bool = False) -> list[str]:
    return [p["metadata"]["name"] for p in deletion_order(list(pods), NOW, logarithmic)]


def test_readiness_changes_after_the_probes_thresholds_in_a_row() -> None:
    container = {"readinessProbe": {"timeoutSeconds": 3, "failureThreshold": 3}}
    probe = ReadinessProbe.of(container)
    assert (probe.timeout, probe.failures, probe.successes) == (3.0, 3, 1)
    assert [probe.observe(ok) for ok in (False, True)] == [False, True]  # ready at once
    # One or two slow or failed probes (a loaded node) keep the pod ready; three in a row do not.
    assert [probe.observe(ok) for ok in (False, False, True, False, False)] == [False] * 5
    assert probe.ready and probe.observe(False) and not probe.ready
    strict = ReadinessProbe.of({"readinessProbe": {"successThreshold": 2}})
    assert [strict.observe(ok) for ok in (True, False, True, True)] == [False, False, False, True]
    assert ReadinessProbe.of({}) == ReadinessProbe(timeout=1.0, failures=3, successes=1)


def test_scale_down_order_is_the_replicasets_ranking() -> None:
    assert order(ranked_pod("bound"), ranked_pod("unbound", node="")) == ["unbound", "bound"]
    pending = ranked_pod("pending", phase="Pending", ready_for=None)
    assert order(ranked_pod("running", ready_for=None), pending) == ["pending", "running"]
    assert order(ranked_pod("ready"), ranked_pod("unready", ready_for=None)) == [
        "unready",
        "ready",
    ]
    # Deletion cost beats readiness time, restarts and age; negative costs go first.
    costly = ranked_pod("costly", cost=5, ready_for=1, age=1)
    assert order(costly, ranked_pod("default"), ranked_pod("cheap", cost=-1)) == [
        "cheap",
        "default",
        "costly",
    ]
    # Ready for less time, then more restarts, then newer.
    assert order(ranked_pod("long", ready_for=100), ranked_pod("short", ready_for=10)) == [
        "short",
        "long",
    ]
    assert order(ranked_pod("calm"), ranked_pod("crashy", restarts=3)) == ["crashy", "calm"]
    assert order(ranked_pod("old", age=300), ranked_pod("new", age=150)) == ["new", "old"]
    # With LogarithmicScaleDown, ages in one power-of-two bucket tie and the uid decides.
    a = ranked_pod("a", ready_for=100, uid="2")
    b = ranked_pod("b", ready_for=110, uid="1")  # 100 s and 110 s: one bucket (2^36 ns)
    assert order(a, b, logarithmic=True) == ["b", "a"]
    assert order(a, b) == ["a", "b"]
    far = ranked_pod("far", ready_for=1000, uid="0")
    assert order(far, a, logarithmic=True) == ["a", "far"]


def test_rollout_steps_follow_the_strategy() -> None:
    surge = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    old = [ranked_pod("old-a", cost=1), ranked_pod("old-b")]
    # Surge one new pod; nothing goes while it is not ready; then one old pod (the cheapest).
    assert rollout_step(2, [], old, surge, now=NOW) == (1, [])
    starting = ranked_pod("new-1", ready_for=None)
    assert rollout_step(2, [starting], old, surge, now=NOW) == (0, [])
    creates, victims = rollout_step(2, [ranked_pod("new-1")], old, surge, now=NOW)
    assert (creates, [v["metadata"]["name"] for v in victims]) == (0, ["old-b"])
    # maxSurge 0 / maxUnavailable 1 (no spare GPU): remove one first, then create.
    spare = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    creates, victims = rollout_step(2, [], old, spare, now=NOW)
    assert (creates, [v["metadata"]["name"] for v in victims]) == (0, ["old-b"])
    assert rollout_step(2, [], old[:1], spare, now=NOW) == (1, [])
    # Recreate: every old pod, then new ones only once the old are gone.
    assert len(rollout_step(2, [], old, {"type": "Recreate"})[1]) == 2
    assert rollout_step(2, [], [], {"type": "Recreate"}, old_terminating=1) == (0, [])
    assert rollout_step(2, [], [], {"type": "Recreate"}) == (2, [])
    # 25%/25% by default; a plain scale-down takes the ranking.
    assert fenceposts({}, 4) == (1, 1) and fenceposts({}, 1) == (1, 0)
    pods = [ranked_pod("busy", cost=3), ranked_pod("idle", cost=0)]
    assert [v["metadata"]["name"] for v in rollout_step(1, pods, [], now=NOW)[1]] == ["idle"]


def pod_names(kube: KubeClient) -> set[str]:
    return {p["metadata"]["name"] for p in kube.list("pods", "tutor.vts.dev/engine=tutor-1")}


def test_scale_down_keeps_the_pods_with_the_highest_deletion_cost(
    kube: KubeClient, kubelet: FakeKubelet
) -> None:
    kube.create("deployments", deployment(3)).raise_for_status()
    pods = wait_for(lambda: len(ready_pods(kube)) == 3 and ready_pods(kube), 60, "3 ready pods")
    names = sorted(p["metadata"]["name"] for p in pods)
    costs = dict(zip(names, ("5", "-1", "0"), strict=True))
    for name, cost in costs.items():
        annotations = {"controller.kubernetes.io/pod-deletion-cost": cost}
        kube.patch("pods", name, {"metadata": {"annotations": annotations}}).raise_for_status()
    kube.patch("deployments", "tutor-1", {"spec": {"replicas": 1}})
    wait_for(lambda: pod_names(kube) == {names[0]}, 30, "the costliest pod alone")
    wait_for(lambda: set(kubelet.processes()) == {names[0]}, 30, "its process alone")


def test_a_template_change_surges_a_ready_pod_before_removing_the_old_one(
    kube: KubeClient, kubelet: FakeKubelet
) -> None:
    body = deployment(1)
    body["spec"]["strategy"] = {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    kube.create("deployments", body).raise_for_status()
    (first,) = wait_for(lambda: ready_pods(kube), 30, "a ready pod")
    old = first["metadata"]["name"]
    rv = kube.http.get(kube.path("pods")).json()["metadata"]["resourceVersion"]
    container = body["spec"]["template"]["spec"]["containers"][0]
    container = {**container, "env": [*container["env"], {"name": "ENGINE_X", "value": "1"}]}
    patch = {"spec": {"template": {"spec": {"containers": [container]}}}}
    kube.patch("deployments", "tutor-1", patch).raise_for_status()

    events: list[tuple[str, str, bool, bool]] = []  # (type, name, ready, deleting)
    params = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": "50"}
    with kube.http.stream("GET", kube.path("pods"), params=params, timeout=60) as response:
        for line in response.iter_lines():
            if not line:
                continue
            event = json.loads(line)
            obj = event["object"]
            meta = obj["metadata"]
            ready = is_ready(obj)
            events.append((event["type"], meta["name"], ready, bool(meta.get("deletionTimestamp"))))
            if event["type"] == "DELETED" and meta["name"] == old:
                break
    new_ready = next(i for i, e in enumerate(events) if e[1] != old and e[2])
    old_deleting = next(i for i, e in enumerate(events) if e[1] == old and e[3])
    old_gone = next(i for i, e in enumerate(events) if e[1] == old and e[0] == "DELETED")
    assert new_ready < old_deleting < old_gone  # surge, then a graceful deletion
    wait_for(lambda: len(kubelet.processes()) == 1 and old not in kubelet.processes(), 30)
    status = wait_for(
        lambda: (s := kube.get("deployments", "tutor-1")["status"]).get("replicas") == 1 and s,
        30,
        "one replica",
    )
    assert status["updatedReplicas"] == 1 and status["readyReplicas"] == 1
