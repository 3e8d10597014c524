"""Cold start in a cluster: ``status`` events follow the TutorSession's Pending reasons.

The API emulator, the real operator and the fake kubelet (engine pods as processes). A tutor
whose engine loads slowly (ENGINE_LLM_MOCK_LOAD_SECONDS in its TutorEngine's ``spec.env``):
an opted-in client hears the operator's reasons, then ``ready``, then its answer; REST shows
the same. An engine whose LLM server is unreachable: the operator reads its ``/readyz``, so
the TutorEngine's and the TutorSession's conditions name the server, and so does the client's
4503 ``error``. No timing assertions.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from tutor_contract.crd import ACTIVE, ASSIGNED, LOADING, PENDING, REASONS
from tutor_gateway.startup import CONNECTING, STATES
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.gateway.helpers import create_session, recv
from tests.support.cluster import Cluster, KubeClient, wait_for

from .test_gateway_cluster import cluster_gateway

STATUS_KEYS = {"type", "state", "reason", "message", "elapsed_seconds", "timestamp"}


def tutor_engine(kube: KubeClient, tutor: int, **spec: Any) -> None:
    body = {
        "apiVersion": "tutor.vts.dev/v1alpha1",
        "kind": "TutorEngine",
        "metadata": {"name": f"tutor-{tutor}"},
        "spec": {"tutorId": tutor, **spec},
    }
    kube.create("tutorengines", body).raise_for_status()


def ready_condition(kube: KubeClient, plural: str, name: str) -> dict[str, Any]:
    obj = kube.get(plural, name) or {}
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def test_status_events_follow_the_sessions_pending_reasons(
    cluster: Cluster, gateway_factory
) -> None:
    tutor_engine(cluster.kube, 41, env=[{"name": "ENGINE_LLM_MOCK_LOAD_SECONDS", "value": "3"}])
    gateway = cluster_gateway(gateway_factory, cluster.url, engine_start_timeout_seconds=120)
    session = create_session(gateway, tutor_id=41)
    sid = session["session_id"]
    rest = httpx.get(f"{gateway.http}/v1/sessions/{sid}").json()
    assert rest["status"] == "active" and rest["engine"]["phase"] == PENDING

    url = f"{gateway.ws}/ws/ws/{sid}?token={session['engine_token']}&events=1"
    statuses, seen_in_rest = [], []
    with connect(url, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "text", "content": "hello, cold pod"}))
        while not statuses or statuses[-1]["state"] != "ready":
            message = recv(ws, timeout=90)
            assert message["type"] == "status" and set(message) == STATUS_KEYS, message
            statuses.append(message)
            if message["reason"] == LOADING and not seen_in_rest:
                seen_in_rest.append(httpx.get(f"{gateway.http}/v1/sessions/{sid}").json())
        answer = recv(ws, timeout=60)
    assert answer["type"] == "text" and "hello, cold pod" in answer["content"]
    assert all(s["state"] in STATES for s in statuses)
    # Every reason is one the operator writes (or the phase, before it wrote one).
    assert {s["reason"] for s in statuses} <= {*REASONS, PENDING, CONNECTING}
    loading = [s for s in statuses if s["reason"] == LOADING]
    assert loading and all(s["state"] == "loading" for s in loading)
    assert "engine is loading its models" in loading[0]["message"]
    assert statuses[-1]["reason"] == ASSIGNED
    engine = seen_in_rest[0]["engine"]
    assert (engine["phase"], engine["reason"]) == (PENDING, LOADING)
    after = httpx.get(f"{gateway.http}/v1/sessions/{sid}").json()["engine"]
    assert (after["phase"], after["reason"]) == (ACTIVE, ASSIGNED)
    assert after["message"].startswith("pinned to pod tutor-41-")


def test_an_unreachable_llm_is_named_in_the_conditions_and_the_4503(
    cluster: Cluster, gateway_factory, closed_port: int
) -> None:
    base = f"http://127.0.0.1:{closed_port}"
    tutor_engine(cluster.kube, 42, models={"llm": {"backend": "openai", "baseUrl": f"{base}/v1"}})
    gateway = cluster_gateway(gateway_factory, cluster.url, engine_start_timeout_seconds=15)
    session = create_session(gateway, tutor_id=42)
    named = f"LLM server {base} unreachable: connection refused"

    def condition_names_it(plural: str, name: str) -> bool:
        cond = ready_condition(cluster.kube, plural, name)
        return cond.get("reason") == LOADING and named in cond.get("message", "")

    wait_for(lambda: condition_names_it("tutorengines", "tutor-42"), 60, "the engine condition")
    wait_for(lambda: condition_names_it("tutorsessions", session["session_id"]), 30, "session")

    url = f"{gateway.ws}/ws/ws/{session['session_id']}?token={session['engine_token']}&events=1"
    messages = []
    with connect(url, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "text", "content": "anyone there?"}))
        while not messages or messages[-1]["type"] != "error":
            messages.append(recv(ws, timeout=60))
        with pytest.raises(ConnectionClosed) as closed:
            recv(ws, timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4503
    assert named in messages[-1]["content"]
    statuses = messages[:-1]
    assert statuses and all(m["type"] == "status" for m in statuses)
    assert any(m["reason"] == LOADING and named in m["message"] for m in statuses)
    rest = httpx.get(f"{gateway.http}/v1/sessions/{session['session_id']}").json()["engine"]
    assert rest["reason"] == LOADING and named in rest["message"]
