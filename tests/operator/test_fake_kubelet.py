"""The fake kubelet: Deployments become engine processes whose state shows on the Pods."""

from __future__ import annotations

import httpx
import pytest

from tests.support.cluster import ENGINE_KEY, NAMESPACE, KubeClient, wait_for
from tests.support.kube_emulator import RunningEmulator
from tests.support.kubelet import FakeKubelet

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

        def unschedulable() -> str | None:
            for p in kube.list("pods"):
                for c in p.get("status", {}).get("conditions", []):
                    if c["type"] == "PodScheduled" and c["status"] == "False":
                        return c["message"]
            return None

        assert "Insufficient nvidia.com/gpu" in wait_for(unschedulable, 10, "an unschedulable pod")
        assert len(kubelet.processes()) == 1
        kube.patch(
            "deployments",
            "tutor-1",
            {"spec": {"template": {"spec": {"nodeSelector": {"pool": "cpu"}}}}},
        )
        wait_for(
            lambda: "node affinity/selector" in (unschedulable() or ""), 20, "no matching node"
        )
        assert not kubelet.processes()
