"""The gateway's TutorSession cache when its watch breaks (issue 10: 410 Gone, half-open watches,
API timeouts), against the API emulator behind a proxy that can hold, stall or black-hole the
gateway's connections. No operator runs: sessions stay Pending, which is all the cache needs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.gateway.helpers import create_session, open_ws, recv
from tests.servers import RunningServer
from tests.support.cluster import NAMESPACE, KubeClient, wait_for
from tests.support.kube_emulator import RunningEmulator
from tests.support.paths import rest_path

from .api_proxy import ApiProxy
from .test_gateway_cluster import cluster_gateway

SESSIONS = rest_path("tutorsessions", NAMESPACE)
# Quick recovery for tests: short API timeout and back-off.
FAST = {
    "kube_api_timeout_seconds": 2,
    "kube_retry_initial_seconds": 0.05,
    "kube_retry_max_seconds": 0.5,
}


@pytest.fixture
def proxy(kube_api: RunningEmulator) -> Iterator[ApiProxy]:
    with ApiProxy(kube_api.port) as running:
        yield running


def proxied_gateway(gateway_factory, kube_api: RunningEmulator, proxy: ApiProxy, **overrides):
    """A gateway reaching the emulator through ``proxy``, as the chart's gateway account."""
    token = kube_api.tokens["gateway"]
    return cluster_gateway(gateway_factory, proxy.url, kube_api_token=token, **overrides)


def session_ids(gateway: RunningServer) -> set[str]:
    body = httpx.get(f"{gateway.http}/mgmt/v1/sessions", timeout=10).json()
    return {s["session_id"] for s in body["sessions"]}


def api_session_ids(kube: KubeClient) -> set[str]:
    return {o["metadata"]["name"] for o in kube.list("tutorsessions")}


def assert_gone_from(kube: KubeClient, resource_version: str) -> None:
    """A watch resuming from ``resource_version`` is answered 410 Gone (the premise)."""
    params = {"watch": "true", "resourceVersion": resource_version, "timeoutSeconds": "1"}
    with kube.http.stream("GET", SESSIONS, params=params) as response:
        first = json.loads(next(response.iter_lines()))
    assert first["type"] == "ERROR" and first["object"]["code"] == 410, first


def interrupt_watches(kube_api: RunningEmulator, proxy: ApiProxy) -> None:
    """End every TutorSession watch cleanly (as at an API server restart) while the proxy
    holds what its clients send next: their resumed watches wait there."""
    proxy.hold()
    assert kube_api.call(kube_api.emulator.drop_watches, "tutorsessions") >= 1
    wait_for(lambda: proxy.held, 10, "the gateway's resumed watch to reach the proxy")


def delete_and_compact(kube_api: RunningEmulator, kube: KubeClient, name: str) -> None:
    """Delete a session while its watchers are away, then compact the history past it."""
    before = kube.http.get(kube.path("tutorsessions")).json()["metadata"]["resourceVersion"]
    assert kube.delete("tutorsessions", name).status_code == 200
    kube_api.call(kube_api.emulator.compact, "tutorsessions")
    assert_gone_from(kube, before)


def create_or_503(gateway: RunningServer) -> dict[str, Any] | None:
    """POST a session: its body if created, None on a 503 that names the Kubernetes API."""
    response = httpx.post(
        f"{gateway.http}/v1/sessions", json={"tutor_id": 1, "student_id": 1}, timeout=30
    )
    if response.status_code == 503:
        assert "Kubernetes API" in response.json()["detail"]
        return None
    assert response.status_code == 201, response.text
    return response.json()


def close_code(ws: Any, within: float) -> int:
    """Read (error frames only) until the server closes; the close code, within ``within`` s."""
    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as info:
        while True:
            assert recv(ws, timeout=within)["type"] == "error"
    assert time.monotonic() - started < within
    assert info.value.rcvd is not None
    return info.value.rcvd.code


def test_a_session_deleted_while_the_watch_is_down_is_gone_after_410(
    kube_api: RunningEmulator, kube: KubeClient, proxy: ApiProxy, gateway_factory
) -> None:
    gateway = proxied_gateway(
        gateway_factory, kube_api, proxy, max_sessions=2, engine_start_timeout_seconds=60, **FAST
    )
    doomed = create_session(gateway, tutor_id=1)
    kept = create_session(gateway, tutor_id=1)
    refused = httpx.post(f"{gateway.http}/v1/sessions", json={"tutor_id": 1, "student_id": 1})
    assert refused.status_code == 503
    with open_ws(gateway, doomed) as waiting:  # Pending: the socket waits for an engine
        waiting.ping().wait(10)
        interrupt_watches(kube_api, proxy)
        delete_and_compact(kube_api, kube, doomed["session_id"])
        proxy.release()  # the resumed watch gets 410: only a re-list can see the deletion

        wait_for(lambda: session_ids(gateway) == {kept["session_id"]}, 15, "the re-list")
        assert close_code(waiting, within=10) == 4410
    missing = httpx.get(f"{gateway.http}/v1/sessions/{doomed['session_id']}")
    assert missing.status_code == 404
    assert httpx.get(f"{gateway.http}/health").json()["active_sessions"] == 1
    with open_ws(gateway, doomed) as late:
        assert close_code(late, within=10) in (4410, 4404)
    create_session(gateway, tutor_id=1)  # the deleted session no longer counts


def test_a_half_open_watch_is_detected_and_relisted(
    kube_api: RunningEmulator, kube: KubeClient, proxy: ApiProxy, gateway_factory
) -> None:
    gateway = proxied_gateway(
        gateway_factory, kube_api, proxy, kube_watch_stale_seconds=1.5, **FAST
    )
    session = create_session(gateway, tutor_id=1)
    assert session_ids(gateway) == {session["session_id"]}
    proxy.stall()  # the watch (and every open connection) goes silent and never closes
    assert kube.delete("tutorsessions", session["session_id"]).status_code == 200
    wait_for(lambda: not session_ids(gateway), 15, "the stale watch to be dropped and re-listed")
    assert httpx.get(f"{gateway.http}/v1/sessions/{session['session_id']}").status_code == 404
    # A request on a pooled connection that went silent too fails after the API timeout
    # (503); new connections work, and the new watch follows.
    again = wait_for(lambda: create_or_503(gateway), 15, "a session to be created again")
    wait_for(lambda: session_ids(gateway) == {again["session_id"]}, 10, "the new session")


@pytest.mark.parametrize("kube_api", [{"bookmark_interval": 0.3}], indirect=True)
def test_bookmarks_keep_a_quiet_watch_from_going_stale(
    kube_api: RunningEmulator, kube: KubeClient, gateway_factory, caplog
) -> None:
    gateway = cluster_gateway(gateway_factory, kube_api.url, kube_watch_stale_seconds=1.5, **FAST)
    session = create_session(gateway, tutor_id=1)
    deadline = time.monotonic() + 4  # quiet for well over KUBE_WATCH_STALE_SECONDS
    while time.monotonic() < deadline:
        assert session_ids(gateway) == {session["session_id"]}
        time.sleep(0.2)
    assert kube.delete("tutorsessions", session["session_id"]).status_code == 200
    wait_for(lambda: not session_ids(gateway), 10, "the deletion through the same watch")
    assert not [r for r in caplog.records if "re-listing" in r.getMessage()]


def test_two_gateway_replicas_converge_after_one_missed_events(
    kube_api: RunningEmulator, kube: KubeClient, proxy: ApiProxy, gateway_factory
) -> None:
    direct = cluster_gateway(gateway_factory, kube_api.url, **FAST)
    behind = proxied_gateway(gateway_factory, kube_api, proxy, **FAST)
    first = create_session(direct, tutor_id=2)
    second = create_session(behind, tutor_id=2)
    both = {first["session_id"], second["session_id"]}
    wait_for(lambda: session_ids(behind) == both, 10, "the second replica to see both")
    wait_for(lambda: session_ids(direct) == both, 10, "the first replica to see both")

    interrupt_watches(kube_api, proxy)  # only the replica behind the proxy is held back
    third = create_session(direct, tutor_id=2)
    delete_and_compact(kube_api, kube, first["session_id"])
    proxy.release()

    expected = {second["session_id"], third["session_id"]}
    wait_for(lambda: session_ids(direct) == expected, 10, "the first replica")
    wait_for(lambda: session_ids(behind) == expected, 15, "the second replica to converge")
    assert api_session_ids(kube) == expected
    assert httpx.get(f"{behind.http}/v1/sessions/{first['session_id']}").status_code == 404

    assert httpx.delete(f"{behind.http}/v1/sessions/{second['session_id']}").status_code == 204
    for gateway in (direct, behind):
        wait_for(lambda g=gateway: session_ids(g) == {third["session_id"]}, 10, "both replicas")
        assert httpx.get(f"{gateway.http}/health").json()["active_sessions"] == 1


def test_an_api_that_never_answers_is_a_503_within_the_api_timeout(
    kube_api: RunningEmulator, kube: KubeClient, gateway_factory
) -> None:
    gateway = cluster_gateway(gateway_factory, kube_api.url, **FAST)
    kube_api.call(kube_api.emulator.inject, "hang", 1)  # the next write never gets an answer
    started = time.monotonic()
    response = httpx.post(
        f"{gateway.http}/v1/sessions", json={"tutor_id": 1, "student_id": 1}, timeout=30
    )
    assert response.status_code == 503
    assert "Kubernetes API" in response.json()["detail"]
    assert time.monotonic() - started < 2 + 3  # KUBE_API_TIMEOUT_SECONDS, and some slack
