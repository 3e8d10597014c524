"""The gateway's cluster mode against the API emulator, with the real operator and a fake kubelet.

The same REST and WebSocket surface as the local mode, with sessions as TutorSession resources.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from typing import Any

import httpx
import pytest
from tutor_engine.backends.mock import make_wav

from tests.gateway.helpers import create_session, open_ws, recv, say, send_audio
from tests.gateway.test_websocket import closed_with
from tests.servers import RunningServer
from tests.support.cluster import ENGINE_KEY, NAMESPACE, Cluster, KubeClient, wait_for
from tests.support.kubelet import FakeKubelet


def cluster_gateway(gateway_factory, url: str, **overrides: Any) -> RunningServer:
    """A gateway in kubernetes mode on the emulator's test namespace."""
    return gateway_factory(
        gateway_mode="kubernetes",
        kube_api_url=url,
        kube_namespace=NAMESPACE,
        engine_api_key=ENGINE_KEY,
        activity_patch_interval_seconds=0.2,
        **overrides,
    )


def phase(kube: KubeClient, plural: str, name: str) -> str | None:
    obj = kube.get(plural, name)
    return ((obj or {}).get("status") or {}).get("phase")


def test_a_session_lives_as_a_tutorsession_and_talks_through_its_engine_pod(
    cluster: Cluster, gateway_factory
) -> None:
    gateway = cluster_gateway(gateway_factory, cluster.url)
    session = create_session(gateway, tutor_id=2, student_id=7, kb_id="algebra")
    assert session["status"] == "active"
    resource = cluster.kube.get("tutorsessions", session["session_id"])
    assert resource["spec"] == {
        "tutorId": 2,
        "studentId": 7,
        "kbId": "algebra",
        "tokenHash": hashlib.sha256(session["engine_token"].encode()).hexdigest(),
        "timeoutSeconds": 3600,
    }
    assert session["engine_token"] not in json.dumps(resource)

    with open_ws(gateway, session) as ws:
        reply = say(ws, "hello cluster")
        assert reply["type"] == "text" and "Tutor 2 heard: hello cluster" in reply["content"]
        send_audio(ws, make_wav("what is a vector"))
        kinds = [recv(ws) for _ in range(3)]
    assert [m["type"] for m in kinds] == ["transcription", "text", "audio"]
    assert kinds[0]["content"] == "what is a vector"
    assert "turn 2, with 2 earlier messages" in kinds[1]["content"]

    status = cluster.kube.get("tutorsessions", session["session_id"])["status"]
    assert status["phase"] == "Active" and status["engine"] == "tutor-2"
    assert status["lastActivity"]

    info = httpx.get(f"{gateway.http}/v1/sessions/{session['session_id']}").json()
    assert (info["tutor_id"], info["student_id"], info["kb_id"]) == (2, 7, "algebra")
    listed = httpx.get(f"{gateway.http}/mgmt/v1/sessions").json()
    assert [s["session_id"] for s in listed["sessions"]] == [session["session_id"]]
    assert httpx.get(f"{gateway.http}/health").json()["active_sessions"] == 1

    assert httpx.delete(f"{gateway.http}/v1/sessions/{session['session_id']}").status_code == 204
    wait_for(lambda: cluster.kube.get("tutorsessions", session["session_id"]) is None, 10)
    assert httpx.get(f"{gateway.http}/v1/sessions/{session['session_id']}").status_code == 404


def test_expiry_scale_down_and_a_new_session_starts_the_engine_again(
    kube: KubeClient, kubelet, operator_factory, kube_api, gateway_factory
) -> None:
    operator_factory(engine={"idleTimeoutSeconds": 1})
    gateway = cluster_gateway(gateway_factory, kube_api.url, session_timeout_seconds=3)
    session = create_session(gateway, tutor_id=4)
    with open_ws(gateway, session) as ws:
        say(ws, "hello")
        assert "expired" in closed_with(ws, 4408).lower()
    assert httpx.get(f"{gateway.http}/v1/sessions/{session['session_id']}").status_code == 404
    with open_ws(gateway, session) as ws:
        closed_with(ws, 4408)

    wait_for(lambda: phase(kube, "tutorengines", "tutor-4") == "ScaledDown", 30, "scale down")
    assert kube.get("deployments", "tutor-4")["spec"]["replicas"] == 0
    wait_for(lambda: not kubelet.processes(), 20, "engine processes to stop")

    again = create_session(gateway, tutor_id=4)
    with open_ws(gateway, again) as ws:
        assert "wake up" in say(ws, "wake up")["content"]
    assert kube.get("deployments", "tutor-4")["spec"]["replicas"] == 1


def test_a_session_no_replica_has_seen_is_404_from_the_api(
    cluster: Cluster, gateway_factory
) -> None:
    gateway = cluster_gateway(gateway_factory, cluster.url)
    unknown = "0b7ad9d4-5c36-4c1e-9a43-31c0f1a7e2f0"  # not in the cache: the gateway asks the API
    for method in ("GET", "DELETE"):
        answer = httpx.request(method, f"{gateway.http}/v1/sessions/{unknown}")
        assert answer.status_code == 404, (method, answer.text)


def _epoch(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_activity_keeps_a_session_alive(cluster: Cluster, gateway_factory) -> None:
    """A session talked to outlives its timeout; left idle, it expires.

    Timed by the session's own timestamps, not by how long the engine took to cold-start (the
    relay records activity while a reply is awaited) or by a fixed talk time.
    """
    timeout = 3
    gateway = cluster_gateway(gateway_factory, cluster.url, session_timeout_seconds=timeout)
    session = create_session(gateway, tutor_id=6)
    sid = session["session_id"]
    with open_ws(gateway, session) as ws:
        assert say(ws, "hello")["type"] == "text"  # however long the engine took to start
        created = _epoch(cluster.kube.get("tutorsessions", sid)["metadata"]["creationTimestamp"])
        # Talk, with pauses, until the session has lived twice its timeout and more.
        while time.time() < created + 2 * timeout + 1:
            assert say(ws, "still here")["type"] == "text"
            time.sleep(0.5)
        status = cluster.kube.get("tutorsessions", sid)["status"]
        assert status["phase"] == "Active"
        assert time.time() - _epoch(status["lastActivity"]) < timeout  # recorded as it happened
    wait_for(
        lambda: phase(cluster.kube, "tutorsessions", sid) in (None, "Expired"),
        30,
        "the idle session to expire",
    )


def test_two_gateway_replicas_serve_the_same_session(cluster: Cluster, gateway_factory) -> None:
    first = cluster_gateway(gateway_factory, cluster.url)
    second = cluster_gateway(gateway_factory, cluster.url)
    session = create_session(first, tutor_id=3)
    assert httpx.get(f"{second.http}/v1/sessions/{session['session_id']}").status_code == 200
    with open_ws(first, session) as ws:
        say(ws, "my name is Ada")
    with open_ws(second, session) as ws:
        assert "turn 2, with 2 earlier messages" in say(ws, "what is my name")["content"]
        assert httpx.delete(f"{first.http}/v1/sessions/{session['session_id']}").status_code == 204
        assert "ended" in closed_with(ws, 4410).lower()
    wait_for(lambda: httpx.get(f"{second.http}/v1/sessions").json()["total"] == 0, 10)


def test_session_limit_counts_every_replicas_sessions(cluster: Cluster, gateway_factory) -> None:
    first = cluster_gateway(gateway_factory, cluster.url, max_sessions=2)
    second = cluster_gateway(gateway_factory, cluster.url, max_sessions=2)
    create_session(first, tutor_id=1)
    create_session(first, tutor_id=1)
    wait_for(lambda: httpx.get(f"{second.http}/health").json()["active_sessions"] == 2, 10)
    refused = httpx.post(f"{second.http}/v1/sessions", json={"tutor_id": 1, "student_id": 1})
    assert refused.status_code == 503
    assert refused.json() == {"detail": "Maximum number of sessions reached (2)"}


def test_a_connection_waits_for_the_engine_to_start(
    kube: KubeClient, kube_api, operator_factory, gateway_factory
) -> None:
    """With no kubelet yet, the session stays Pending; the socket waits, bounded."""
    operator_factory()
    gateway = cluster_gateway(gateway_factory, kube_api.url, engine_start_timeout_seconds=2)
    session = create_session(gateway, tutor_id=8)
    with open_ws(gateway, session) as ws:
        assert "unavailable" in closed_with(ws, 4503).lower()
    # A loaded operator may not have written any status within the gateway's 2 s: wait for it.
    wait_for(
        lambda: phase(kube, "tutorsessions", session["session_id"]) == "Pending",
        what="the session reported Pending while no pod can start",
    )


def test_messages_wait_while_the_engine_pod_starts(
    kube: KubeClient, kube_api, operator_factory, gateway_factory
) -> None:
    operator_factory()
    gateway = cluster_gateway(gateway_factory, kube_api.url, engine_start_timeout_seconds=60)
    session = create_session(gateway, tutor_id=9)
    with open_ws(gateway, session) as ws:
        ws.send(json.dumps({"type": "text", "content": "are you there"}))
        # No kubelet runs yet: the operator can only report the session Pending.
        wait_for(
            lambda: phase(kube, "tutorsessions", session["session_id"]) == "Pending",
            what="the session Pending while no pod can start",
        )
        with FakeKubelet(kube_api.url, NAMESPACE):
            reply = recv(ws)
    assert reply["type"] == "text" and "are you there" in reply["content"]


@pytest.mark.parametrize("token", ["", "wrong"])
def test_tokens_are_checked_against_the_stored_hash(
    cluster: Cluster, gateway_factory, token: str
) -> None:
    gateway = cluster_gateway(gateway_factory, cluster.url)
    session = create_session(gateway, tutor_id=1)
    with open_ws(gateway, session, token=token) as ws:
        closed_with(ws, 4401)


def test_an_unreachable_api_is_a_503_not_a_crash(kube_api, gateway_factory) -> None:
    gateway = cluster_gateway(gateway_factory, kube_api.url)
    kube_api.stop()
    response = httpx.post(f"{gateway.http}/v1/sessions", json={"tutor_id": 1, "student_id": 1})
    assert response.status_code == 503
    assert "Kubernetes API" in response.json()["detail"]
