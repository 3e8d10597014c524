"""The chart on a real cluster with mock engines: sessions, conversations, cleanup, uninstall.

The tests run in file order; the last one uninstalls the release.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from tutor_engine.backends.mock import make_wav
from websockets.sync.client import ClientConnection, connect

from .conftest import GATEWAY, Cluster, port_forward, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPLY_SECONDS = 180  # the first message waits for the tutor's engine pod to start
AUTH: dict[str, str] = {}  # the management API's Authorization header


@pytest.fixture(autouse=True)
def _authorization(management_key: str) -> None:
    AUTH["Authorization"] = f"Bearer {management_key}"


def create_session(gateway: str, tutor_id: int) -> dict[str, Any]:
    response = httpx.post(
        f"{gateway}/v1/sessions",
        json={"tutor_id": tutor_id, "student_id": 7},
        headers=AUTH,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()


def open_ws(gateway: str, session: dict[str, Any]) -> ClientConnection:
    """The session's WebSocket through the port-forward (engine_url names the public host)."""
    assert session["engine_url"].endswith(f"/ws/ws/{session['session_id']}")
    url = f"ws{gateway.removeprefix('http')}/ws/ws/{session['session_id']}"
    return connect(f"{url}?token={session['engine_token']}", max_size=None, open_timeout=30)


def replies(ws: ClientConnection, message: dict[str, Any], last: str) -> list[dict[str, Any]]:
    """Send one message; every reply up to the one of type ``last`` (or an error)."""
    ws.send(json.dumps(message))
    out: list[dict[str, Any]] = []
    while not out or out[-1]["type"] not in (last, "error"):
        out.append(json.loads(ws.recv(timeout=REPLY_SECONDS)))
    return out


def table(cluster: Cluster, kind: str) -> list[list[str]]:
    """``kubectl get <kind>`` as rows of cells, header first."""
    return [line.split() for line in cluster.kubectl("get", kind).splitlines()]


def test_health(gateway: str) -> None:
    body = httpx.get(f"{gateway}/health", timeout=10).json()
    assert body["status"] == "healthy" and body["max_sessions"] == 100


def test_every_gateway_replica_serves_every_session(gateway: str, cluster: Cluster) -> None:
    session = create_session(gateway, tutor_id=3)
    pods = cluster.names("pod", f"app.kubernetes.io/instance={cluster.release},{GATEWAY}")
    assert len(pods) == 2
    for pod in pods:
        with port_forward(cluster, pod) as url:
            session_url = f"{url}/v1/sessions/{session['session_id']}"
            assert httpx.get(session_url, timeout=10).status_code == 401  # no key
            seen = httpx.get(session_url, headers=AUTH, timeout=10)
            assert seen.status_code == 200 and seen.json()["tutor_id"] == 3
    deleted = httpx.delete(
        f"{gateway}/v1/sessions/{session['session_id']}", headers=AUTH, timeout=10
    )
    assert deleted.status_code == 204


def test_text_and_audio_conversation_and_printer_columns(gateway: str, cluster: Cluster) -> None:
    session = create_session(gateway, tutor_id=1)
    with open_ws(gateway, session) as ws:
        [text] = replies(ws, {"type": "text", "content": "hello"}, last="text")
        assert text["type"] == "text" and text["content"] and text["timestamp"]
        wav = base64.b64encode(make_wav("what is a noun")).decode()
        heard, answer, audio = replies(ws, {"type": "audio", "data": wav}, last="audio")
        assert (heard["type"], heard["content"]) == ("transcription", "what is a noun")
        assert answer["type"] == "text" and answer["content"]
        assert audio["type"] == "audio" and base64.b64decode(audio["data"])[:4] == b"RIFF"

        sessions = table(cluster, "tutorsessions")
        assert sessions[0] == ["NAME", "TUTOR", "STUDENT", "PHASE", "ENGINE", "AGE"]
        assert [session["session_id"], "1", "7", "Active", "tutor-1"] in [
            row[:5] for row in sessions[1:]
        ]
        engines = table(cluster, "tutorengines")
        assert engines[0] == ["NAME", "TUTOR", "READY", "SESSIONS", "PHASE", "AGE"]
        assert ["tutor-1", "1", "1", "1", "Ready"] in [row[:5] for row in engines[1:]]
    deleted = httpx.delete(
        f"{gateway}/v1/sessions/{session['session_id']}", headers=AUTH, timeout=10
    )
    assert deleted.status_code == 204


def test_expired_session_and_idle_engine_are_cleaned_up(gateway: str, cluster: Cluster) -> None:
    """values-kind.yaml: sessions expire after 45 s idle, engines are deleted after 20 s idle."""
    session = create_session(gateway, tutor_id=2)
    url = f"{gateway}/v1/sessions/{session['session_id']}"
    engine = "tutorengine.tutor.vts.dev/tutor-2"
    wait_for(lambda: engine in cluster.names("tutorengines"), 60, "the engine of tutor 2")
    wait_for(
        lambda: httpx.get(url, headers=AUTH, timeout=10).status_code == 404,
        180,
        "the session to expire",
    )
    wait_for(lambda: not cluster.names("tutorengines"), 180, "idle engines to be deleted")
    wait_for(
        lambda: not cluster.names("deployment,service,pod", "app.kubernetes.io/name=tutor-engine"),
        180,
        "engine Deployments, Services and pods to be gone",
    )


def test_helm_uninstall_leaves_nothing_behind(gateway: str, cluster: Cluster) -> None:
    create_session(gateway, tutor_id=4)  # live when uninstalling: the cleanup hook removes it
    wait_for(lambda: cluster.names("tutorengines"), 60, "an engine to uninstall with")
    cluster.run("helm", "uninstall", cluster.release, "--wait", "--timeout", "5m")

    def leftovers() -> list[str]:
        kinds = "all,configmap,secret,serviceaccount,role,rolebinding,networkpolicy,pdb,ingress"
        found = cluster.names(f"{kinds},job,tutorsessions,tutorengines")
        defaults = {"configmap/kube-root-ca.crt", "serviceaccount/default"}
        return [name for name in found if name not in defaults]

    wait_for(lambda: not leftovers(), 120, "the namespace to be empty")
