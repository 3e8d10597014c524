"""The real operator against the API emulator and the fake kubelet: sessions end to end."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest
import websockets
from tutor_contract.crd import READY_ENDPOINTS

from tests.support.cluster import ENGINE_KEY, Cluster, KubeClient, wait_for

pytestmark = pytest.mark.timeout(120)


def session_body(name: str, tutor_id: int, **spec: Any) -> dict[str, Any]:
    token_hash = hashlib.sha256(f"token-{name}".encode()).hexdigest()
    return {
        "apiVersion": "tutor.vts.dev/v1alpha1",
        "kind": "TutorSession",
        "metadata": {"name": name},
        "spec": {"tutorId": tutor_id, "studentId": 1, "tokenHash": token_hash, **spec},
    }


def status(kube: KubeClient, plural: str, name: str) -> dict[str, Any]:
    obj = kube.get(plural, name)
    return (obj or {}).get("status") or {}


def wait_phase(kube: KubeClient, plural: str, name: str, phase: str, timeout: float = 40) -> dict:
    return wait_for(
        lambda: (s := status(kube, plural, name)).get("phase") == phase and s,
        timeout,
        f"{plural}/{name} to be {phase} (now {status(kube, plural, name)})",
    )


async def talk(endpoint: str, session: str, text: str) -> dict[str, Any]:
    url = endpoint.replace("http://", "ws://") + f"/ws/{session}"
    async with websockets.connect(url, additional_headers={"X-Engine-Key": ENGINE_KEY}) as ws:
        await ws.send(json.dumps({"type": "text", "content": text}))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if message["type"] == "text":
                return message


def test_a_session_gets_an_engine_pod_and_talks_to_it(cluster: Cluster) -> None:
    kube = cluster.kube
    assert kube.create("tutorsessions", session_body("s-1", 7)).status_code == 201

    active = wait_phase(kube, "tutorsessions", "s-1", "Active")
    assert active["engine"] == "tutor-7"
    assert active["endpoint"].startswith("http://127.") and active["pod"].startswith("tutor-7-")
    ready = next(cond for cond in active["conditions"] if cond["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Assigned")

    engine = kube.get("tutorengines", "tutor-7")
    assert engine["metadata"]["labels"]["tutor.vts.dev/origin"] == "operator-defaults"
    wait_for(lambda: status(kube, "tutorengines", "tutor-7").get("readyReplicas") == 1)
    engine_status = status(kube, "tutorengines", "tutor-7")
    assert engine_status["phase"] == "Ready" and engine_status["sessions"] == 1
    assert engine_status[READY_ENDPOINTS] == [active["endpoint"]]

    deployment = kube.get("deployments", "tutor-7")
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("TutorEngine", engine["metadata"]["uid"])
    assert kube.get("services", "tutor-7")["spec"]["selector"]["tutor.vts.dev/engine"] == "tutor-7"
    labels = kube.get("tutorsessions", "s-1")["metadata"]["labels"]
    assert labels["tutor.vts.dev/tutor-id"] == "7"

    reply = asyncio.run(talk(active["endpoint"], "s-1", "hi"))
    assert "Tutor 7 heard: hi" in reply["content"] and "timestamp" in reply

    # A second session of the same tutor shares the pod; one of another tutor gets its own.
    kube.create("tutorsessions", session_body("s-2", 7))
    kube.create("tutorsessions", session_body("s-3", 8))
    assert wait_phase(kube, "tutorsessions", "s-2", "Active")["pod"] == active["pod"]
    other = wait_phase(kube, "tutorsessions", "s-3", "Active")
    assert other["engine"] == "tutor-8" and other["endpoint"] != active["endpoint"]
    wait_for(lambda: status(kube, "tutorengines", "tutor-7").get("sessions") == 2)


def test_a_deleted_engine_comes_back_while_it_has_sessions(cluster: Cluster) -> None:
    kube = cluster.kube
    kube.create("tutorsessions", session_body("s", 12))
    first = wait_phase(kube, "tutorsessions", "s", "Active")
    uid = kube.get("tutorengines", "tutor-12")["metadata"]["uid"]
    kube.delete("tutorengines", "tutor-12")
    wait_for(
        lambda: (
            (kube.get("tutorengines", "tutor-12") or {}).get("metadata", {}).get("uid")
            not in (None, uid)
        ),
        20,
        "a new engine",
    )
    moved = wait_for(
        lambda: (
            (s := status(kube, "tutorsessions", "s")).get("pod") not in (None, first["pod"])
            and s.get("phase") == "Active"
            and s
        ),
        40,
        "the session on a pod of the new engine",
    )
    assert moved["endpoint"] != first["endpoint"]


def test_replicas_grow_with_sessions_up_to_the_maximum(cluster: Cluster) -> None:
    kube = cluster.kube  # test defaults: 4 sessions per replica, at most 2 replicas
    for i in range(9):
        kube.create("tutorsessions", session_body(f"s-{i}", 3))
    wait_for(lambda: status(kube, "tutorengines", "tutor-3").get("readyReplicas") == 2, 40)
    wait_for(
        lambda: (
            sum(status(kube, "tutorsessions", f"s-{i}").get("phase") == "Active" for i in range(9))
            == 8
        ),
        20,
        "8 sessions active",
    )
    sessions = [status(kube, "tutorsessions", f"s-{i}") for i in range(9)]
    pods = [s["pod"] for s in sessions if s.get("phase") == "Active"]
    assert sorted(pods.count(p) for p in set(pods)) == [4, 4]
    waiting = next(s for s in sessions if s["phase"] == "Pending")
    assert waiting["conditions"][0]["reason"] == "AtCapacity"
    assert kube.get("deployments", "tutor-3")["spec"]["replicas"] == 2


def test_expiry_idling_and_scale_up_again(kube: KubeClient, kubelet: Any, operator_factory: Any):
    operator_factory(engine={"idleTimeoutSeconds": 2})
    kube.create("tutorsessions", session_body("short", 5, timeoutSeconds=600))
    wait_phase(kube, "tutorsessions", "short", "Active")

    # The gateway records activity; a session idle past its timeout is expired and removed.
    old = "2020-01-01T00:00:00Z"
    assert kube.patch(
        "tutorsessions", "short", {"status": {"lastActivity": old}}, "status"
    ).is_success
    wait_for(lambda: kube.get("tutorsessions", "short") is None, 20, "the session to be deleted")

    # No sessions for the idle timeout: scaled to zero, the pod and its process gone.
    wait_phase(kube, "tutorengines", "tutor-5", "ScaledDown", 30)
    assert kube.get("deployments", "tutor-5")["spec"]["replicas"] == 0
    wait_for(lambda: not kube.list("pods", "tutor.vts.dev/engine=tutor-5"), 20, "pods to go")
    wait_for(lambda: not kubelet.processes(), 20, "engine processes to stop")

    # A new session starts it again.
    kube.create("tutorsessions", session_body("again", 5))
    assert wait_phase(kube, "tutorsessions", "again", "Active")["engine"] == "tutor-5"
    assert kube.get("deployments", "tutor-5")["spec"]["replicas"] == 1


def test_idle_delete_policy_removes_default_engines_and_children(
    kube: KubeClient, kubelet: Any, operator_factory: Any
) -> None:
    operator_factory(engine={"idleTimeoutSeconds": 1, "idlePolicy": "Delete"})
    kube.create("tutorsessions", session_body("s", 9, timeoutSeconds=60))
    wait_phase(kube, "tutorsessions", "s", "Active")
    kube.patch("tutorsessions", "s", {"status": {"lastActivity": "2020-01-01T00:00:00Z"}}, "status")
    wait_for(lambda: kube.get("tutorsessions", "s") is None, 20, "the session to expire")
    wait_for(lambda: kube.get("tutorengines", "tutor-9") is None, 20, "the engine to be deleted")
    wait_for(lambda: kube.get("deployments", "tutor-9") is None, 10, "its Deployment to go")
    assert kube.get("services", "tutor-9") is None
    wait_for(lambda: not kubelet.processes(), 20, "engine processes to stop")


def test_an_administrators_engine_is_used_as_is(cluster: Cluster) -> None:
    kube = cluster.kube
    admin = {
        "apiVersion": "tutor.vts.dev/v1alpha1",
        "kind": "TutorEngine",
        "metadata": {"name": "tutor-11"},
        "spec": {
            "tutorId": 11,
            "maxSessionsPerReplica": 1,
            "idlePolicy": "Delete",
            "idleTimeoutSeconds": 1,
            "resources": {"gpuCount": 0, "memory": "2Gi"},
            "models": {"llm": {"backend": "mock", "model": "tiny-math"}},
            "env": [{"name": "ENGINE_SYSTEM_PROMPT", "value": "You teach algebra."}],
        },
    }
    assert kube.create("tutorengines", admin).status_code == 201
    kube.create("tutorsessions", session_body("math", 11))
    active = wait_phase(kube, "tutorsessions", "math", "Active")

    engine = kube.get("tutorengines", "tutor-11")
    assert engine["spec"] == admin["spec"]  # not replaced by the defaults
    assert "tutor.vts.dev/origin" not in (engine["metadata"].get("labels") or {})
    container = kube.get("deployments", "tutor-11")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ENGINE_LLM_MODEL"] == "tiny-math"
    assert env["ENGINE_SYSTEM_PROMPT"] == "You teach algebra."
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "Tutor 11 heard" in asyncio.run(talk(active["endpoint"], "math", "x"))["content"]

    # One session per replica: a second session gets a second pod.
    kube.create("tutorsessions", session_body("math-2", 11))
    second = wait_phase(kube, "tutorsessions", "math-2", "Active")
    assert second["pod"] != active["pod"]

    # An administrator's engine is never deleted for idleness, only scaled to zero.
    kube.delete("tutorsessions", "math")
    kube.delete("tutorsessions", "math-2")
    wait_phase(kube, "tutorengines", "tutor-11", "ScaledDown", 30)
    assert kube.get("tutorengines", "tutor-11") is not None


@pytest.mark.parametrize(
    ("plural", "body", "reason"),
    [
        ("tutorsessions", session_body("neg", -1), "spec.tutorId: Invalid value: -1"),
        (
            "tutorsessions",
            {
                **session_body("raw", 1),
                "spec": {"tutorId": 1, "studentId": 1, "tokenHash": "s3cret"},
            },
            "spec.tokenHash: Invalid value",
        ),
        ("tutorsessions", session_body("zero", 1, timeoutSeconds=0), "spec.timeoutSeconds"),
        (
            "tutorsessions",
            {**session_body("nostudent", 1), "spec": {"tutorId": 1}},
            "spec.studentId: Required value",
        ),
        (
            "tutorengines",
            {"metadata": {"name": "math"}, "spec": {"tutorId": 4}},
            "must be named tutor-<spec.tutorId>",
        ),
        (
            "tutorengines",
            {"metadata": {"name": "tutor-4"}, "spec": {"tutorId": 4, "idlePolicy": "Sometimes"}},
            'supported values: "ScaleToZero", "Delete"',
        ),
        (
            "tutorengines",
            {
                "metadata": {"name": "tutor-4"},
                "spec": {"tutorId": 4, "minReplicas": 3, "maxReplicas": 2},
            },
            "minReplicas must not exceed maxReplicas",
        ),
        (
            "tutorengines",
            {
                "metadata": {"name": "tutor-4"},
                "spec": {"tutorId": 4, "models": {"llm": {"backend": "gpt"}}},
            },
            "spec.models.llm.backend",
        ),
    ],
)
def test_bad_specs_are_rejected_with_a_reason(
    kube: KubeClient, plural: str, body: dict, reason: str
) -> None:
    response = kube.create(plural, body)
    assert response.status_code == 422
    assert response.json()["reason"] == "Invalid" and reason in response.json()["message"]


def test_identity_fields_are_immutable(kube: KubeClient) -> None:
    kube.create("tutorsessions", session_body("s", 1)).raise_for_status()
    for change in ({"tutorId": 2}, {"studentId": 2}, {"tokenHash": "0" * 64}):
        response = kube.patch("tutorsessions", "s", {"spec": change})
        assert response.status_code == 422 and "is immutable" in response.json()["message"]
    assert kube.patch("tutorsessions", "s", {"spec": {"timeoutSeconds": 60}}).is_success
