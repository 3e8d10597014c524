"""Engine pods on the fake kubelet: the vLLM sidecar, and model load failures in the status."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.cluster import Cluster, wait_for

from .test_operator_flow import session_body, status, wait_phase

pytestmark = pytest.mark.timeout(120)


def admin_engine(tutor_id: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tutor.vts.dev/v1alpha1",
        "kind": "TutorEngine",
        "metadata": {"name": f"tutor-{tutor_id}"},
        "spec": {"tutorId": tutor_id, **spec},
    }


def ready_condition(body: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in body.get("conditions", []) if c["type"] == "Ready"), {})


def test_an_openai_engine_gets_a_vllm_sidecar_that_holds_the_gpu(cluster: Cluster) -> None:
    kube = cluster.kube
    # The sidecar cannot run here (no GPU, no vLLM): the fake kubelet reports it ready without
    # running it, and the engine talks to its mock LLM (spec.env wins over the operator's env).
    spec = {
        "models": {"llm": {"backend": "openai", "server": {"model": "org/tiny-llm"}}},
        "env": [{"name": "ENGINE_LLM_BACKEND", "value": "mock"}],
    }
    assert kube.create("tutorengines", admin_engine(21, **spec)).status_code == 201
    kube.create("tutorsessions", session_body("s", 21))
    active = wait_phase(kube, "tutorsessions", "s", "Active")

    pod = next(p for p in kube.list("pods") if p["metadata"]["name"] == active["pod"])
    engine, vllm = pod["spec"]["containers"]
    assert (engine["name"], vllm["name"]) == ("engine", "vllm")
    assert "--model=org/tiny-llm" in vllm["args"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in engine["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in engine["env"]}
    assert env["ENGINE_LLM_BASE_URL"] == "http://127.0.0.1:8001/v1"
    assert env["ENGINE_LLM_MODEL"] == "org/tiny-llm"
    statuses = {s["name"]: s["ready"] for s in pod["status"]["containerStatuses"]}
    assert statuses == {"engine": True, "vllm": True}


def test_a_model_that_fails_to_load_shows_in_the_engine_and_session_status(
    cluster: Cluster,
) -> None:
    kube = cluster.kube
    spec = {"models": {"asr": {"backend": "faster-whisper", "model": "/nonexistent"}}}
    assert kube.create("tutorengines", admin_engine(22, **spec)).status_code == 201
    kube.create("tutorsessions", session_body("s", 22))

    def failed() -> dict[str, Any] | None:
        engine = status(kube, "tutorengines", "tutor-22")
        if engine.get("phase") == "Failed":
            return engine
        return None

    engine = wait_for(failed, 60, "the engine to fail with its load error")
    cond = ready_condition(engine)
    assert cond["status"] == "False" and cond["reason"] == "ModelLoadFailed"
    assert "faster-whisper: HFValidationError" in cond["message"]
    assert "/nonexistent" in cond["message"]
    session = wait_for(
        lambda: (
            ready_condition(s := status(kube, "tutorsessions", "s")).get("reason")
            == "ModelLoadFailed"
            and s
        ),
        20,
        "the session to carry the reason",
    )
    assert session["phase"] == "Pending" and "/nonexistent" in ready_condition(session)["message"]

    # Fixing the spec rolls the pods; the waiting session is placed.
    kube.patch("tutorengines", "tutor-22", {"spec": {"models": {"asr": {"backend": "mock"}}}})
    wait_phase(kube, "tutorsessions", "s", "Active", 60)
    assert status(kube, "tutorengines", "tutor-22")["phase"] == "Ready"
