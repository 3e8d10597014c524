"""The operator where a real cluster differs from a friendly one: watch gaps ending in 410 Gone,
ReplicaSets that pick which pod to remove, templates that lose fields, calls that never come
back, operators that die, and operator upgrades. Real operator, emulator (with the chart's
RBAC) and fake kubelet.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from tutor_contract.crd import READY_ENDPOINTS
from tutor_operator import names, objects
from tutor_operator.settings import EngineDefaults

from tests.support.cluster import OPERATOR_ENGINE, KubeClient, wait_for
from tests.support.kube_emulator import RunningEmulator

from .test_engine_pods import admin_engine
from .test_operator_flow import session_body, status, wait_phase

pytestmark = pytest.mark.timeout(150)


def live_pods(kube: KubeClient, engine: str) -> list[dict[str, Any]]:
    selector = f"{names.LABEL_ENGINE}={engine}"
    return [p for p in kube.list("pods", selector) if not p["metadata"].get("deletionTimestamp")]


def pod_names(kube: KubeClient, engine: str) -> set[str]:
    return {p["metadata"]["name"] for p in live_pods(kube, engine)}


def pod_spec(kube: KubeClient, name: str) -> dict[str, Any]:
    deployment = kube.get("deployments", name) or {}
    return deployment.get("spec", {}).get("template", {}).get("spec", {})


def test_a_pod_deleted_while_the_watch_is_down_is_dropped_after_the_relist(
    kube_api: RunningEmulator, kube: KubeClient, kubelet: Any, operator_factory: Any
) -> None:
    """kopf re-lists after 410 Gone but keeps index entries of objects deleted meanwhile:
    the operator's own re-list drops them, so the session moves to a pod that exists."""
    operator = operator_factory(TUTOR_OPERATOR_RESYNC_INTERVAL="1")
    kube.create("tutorsessions", session_body("g-1", 31)).raise_for_status()
    first = wait_phase(kube, "tutorsessions", "g-1", "Active")
    wait_for(lambda: status(kube, "tutorengines", "tutor-31").get("readyReplicas") == 1, 30)

    # The operator stops reading; its pod watch is cut; the pod goes; the history is
    # compacted, so the operator's watch can only resume with 410 Gone and a re-list.
    pid = operator.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        kube_api.drop_watches("pods", abort=True)
        kube.delete("pods", first["pod"]).raise_for_status()
        wait_for(lambda: kube.get("pods", first["pod"]) is None, 30, "the pod to be gone")
        kube_api.compact("pods")
    finally:
        os.kill(pid, signal.SIGCONT)

    moved = wait_for(
        lambda: (
            (s := status(kube, "tutorsessions", "g-1")).get("phase") == "Active"
            and s["pod"] != first["pod"]
            and s["pod"] in pod_names(kube, "tutor-31")
            and s
        ),
        60,
        "g-1 to be Active on a pod that exists",
    )
    engine = wait_for(
        lambda: (
            (e := status(kube, "tutorengines", "tutor-31")).get(READY_ENDPOINTS)
            == [moved["endpoint"]]
            and e
        ),
        30,
        "the engine to report only the pod that exists",
    )
    assert engine["readyReplicas"] == 1 and engine["replicas"] == 1


def test_a_scale_down_removes_the_empty_pod_and_busy_pods_are_guarded(
    kube: KubeClient, kubelet: Any, operator_factory: Any
) -> None:
    """Four sessions fill the first pod, two more go to a second, newer one; the first four
    end. The ReplicaSet would remove the newest pod; its deletion cost keeps it."""
    operator_factory()  # test defaults: 4 sessions per replica, at most 2 replicas
    first = [f"sd-{i}" for i in range(4)]
    for name in first:
        kube.create("tutorsessions", session_body(name, 32)).raise_for_status()
    old_pod = {wait_phase(kube, "tutorsessions", n, "Active")["pod"] for n in first}
    assert len(old_pod) == 1
    later = ["sd-4", "sd-5"]
    for name in later:
        kube.create("tutorsessions", session_body(name, 32)).raise_for_status()
    new_pod = {wait_phase(kube, "tutorsessions", n, "Active")["pod"] for n in later}
    assert len(new_pod) == 1 and new_pod != old_pod
    (busy,) = new_pod

    def marked(pod: str) -> bool:
        found = next((p for p in live_pods(kube, "tutor-32") if p["metadata"]["name"] == pod), {})
        meta = found.get("metadata", {})
        annotations = meta.get("annotations") or {}
        return (
            (meta.get("labels") or {}).get(names.LABEL_BUSY) == "true"
            and annotations.get(names.SAFE_TO_EVICT) == "false"
            and annotations.get(names.DO_NOT_DISRUPT) == "true"
        )

    wait_for(lambda: marked(busy) and marked(next(iter(old_pod))), 20, "the busy marks")
    pdb = wait_for(lambda: kube.get("poddisruptionbudgets", "tutor-32"), 20, "the PDB")
    assert pdb["spec"]["selector"]["matchLabels"][names.LABEL_BUSY] == "true"
    assert pdb["spec"]["maxUnavailable"] == 0

    for name in first:
        kube.delete("tutorsessions", name).raise_for_status()
    wait_for(lambda: pod_names(kube, "tutor-32") == {busy}, 60, "only the busy pod to remain")
    assert (kube.get("deployments", "tutor-32") or {})["spec"]["replicas"] == 1
    for name in later:
        assert status(kube, "tutorsessions", name)["pod"] == busy
    remaining = live_pods(kube, "tutor-32")[0]["metadata"]["annotations"]
    assert remaining[names.DELETION_COST] == "2"


def test_an_operator_upgrade_keeps_the_pods_of_a_busy_engine(
    kube: KubeClient, kubelet: Any, operator_factory: Any
) -> None:
    """An engine, its Deployment as an earlier operator built it (no hashes, an older
    template) and a session exist before this operator starts: it adopts the Deployment
    without rolling the pod; once the engine is idle it brings the template up to date."""
    kube.create("tutorengines", admin_engine(33)).raise_for_status()
    engine = kube.get("tutorengines", "tutor-33")
    older = objects.build_engine_deployment(
        objects.resolve(engine, EngineDefaults.model_validate(OPERATOR_ENGINE)), 1
    )
    del older["metadata"]["annotations"]
    older_env = {"name": "ENGINE_BUILT_BY", "value": "an earlier operator"}
    older["spec"]["template"]["spec"]["containers"][0]["env"].append(older_env)
    kube.create("deployments", older).raise_for_status()
    (pod,) = wait_for(lambda: pod_names(kube, "tutor-33"), 30, "the engine's pod")
    kube.create("tutorsessions", session_body("up-1", 33)).raise_for_status()

    operator_factory()
    assert wait_phase(kube, "tutorsessions", "up-1", "Active")["pod"] == pod
    wait_for(
        lambda: names.SPEC_HASH in kube.get("deployments", "tutor-33")["metadata"]["annotations"],
        30,
        "the Deployment to be adopted",
    )
    # The operator keeps reconciling the engine (a second session is placed) without a roll.
    kube.create("tutorsessions", session_body("up-2", 33)).raise_for_status()
    assert wait_phase(kube, "tutorsessions", "up-2", "Active")["pod"] == pod
    assert older_env in pod_spec(kube, "tutor-33")["containers"][0]["env"]
    assert pod_names(kube, "tutor-33") == {pod}

    # Idle, it may roll: the template becomes this operator's.
    for name in ("up-1", "up-2"):
        kube.delete("tutorsessions", name).raise_for_status()
    wait_for(
        lambda: older_env not in pod_spec(kube, "tutor-33")["containers"][0]["env"],
        30,
        "the idle engine's template to be replaced",
    )
    annotations = kube.get("deployments", "tutor-33")["metadata"]["annotations"]
    assert annotations[names.TEMPLATE_HASH] == objects.template_hash(
        kube.get("deployments", "tutor-33")["spec"]["template"]
    )


def test_fields_removed_from_an_engine_leave_its_deployment(
    kube: KubeClient, operator_factory: Any
) -> None:
    """A dropped nodeSelector key or DRA claim must not stay behind (a merge patch would keep
    them: the pod would then ask for a DRA GPU and a device-plugin GPU at once)."""
    spec = {
        "nodeSelector": {"pool": "gpu", "zone": "a"},
        "resources": {"gpuClaimTemplate": "shared-gpu"},
    }
    kube.create("tutorengines", admin_engine(34, **spec)).raise_for_status()
    operator = operator_factory()
    before = wait_for(lambda: pod_spec(kube, "tutor-34"), 30, "the Deployment")
    assert before["nodeSelector"] == {"pool": "gpu", "zone": "a"}
    assert before["resourceClaims"][0]["resourceClaimTemplateName"] == "shared-gpu"
    # No finalizer: kopf adds one before its handlers run when a handler needs it.
    assert not kube.get("tutorengines", "tutor-34")["metadata"].get("finalizers")

    patch = {"spec": {"nodeSelector": {"zone": None}, "resources": {"gpuClaimTemplate": None}}}
    kube.patch("tutorengines", "tutor-34", patch).raise_for_status()
    after = wait_for(
        lambda: (p := pod_spec(kube, "tutor-34")).get("nodeSelector") == {"pool": "gpu"} and p,
        30,
        "the nodeSelector key to leave the Deployment",
    )
    assert "resourceClaims" not in after
    assert all("claims" not in c["resources"] for c in after["containers"])
    assert after["containers"][-1]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    # With the operator gone, an engine (a namespace) can still be deleted: no finalizer.
    operator.kill()
    kube.delete("tutorengines", "tutor-34").raise_for_status()
    wait_for(lambda: kube.get("tutorengines", "tutor-34") is None, 20, "the engine to be gone")


def test_a_call_that_never_returns_does_not_hold_the_engine(
    kube_api: RunningEmulator, kube: KubeClient, kubelet: Any, operator_factory: Any
) -> None:
    """The first status write of the operator hangs (the server accepted it and never
    answers): it times out, releases the engine's lock, and the session is placed anyway."""
    fault = kube_api.inject("hang", resource="tutorsessions/status", methods={"PATCH"})
    operator_factory(TUTOR_OPERATOR_API_TIMEOUT="1")
    kube.create("tutorsessions", session_body("h-1", 35)).raise_for_status()
    wait_phase(kube, "tutorsessions", "h-1", "Active", timeout=60)
    assert fault.hits == 1
