"""The gateway's Prometheus metrics, scraped from a real gateway (local mode, real engines):
REST requests by route template, relay frames and bytes, the wait for an engine, sessions by
tutor and state. Names and buckets are the contract the dashboards and alerts use."""

from __future__ import annotations

import json
import sys
import uuid

import httpx
import pytest
from tutor_contract.metrics import FAST_BUCKETS, START_BUCKETS

from tests.conftest import GatewayFactory
from tests.gateway.helpers import create_session, open_ws
from tests.gateway.test_websocket import closed_with
from tests.servers import RunningServer
from tests.support.metrics import Scrape, scrape
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

REQUESTS = "tutor_gateway_http_requests_total"
DURATION = "tutor_gateway_http_request_duration_seconds"
FRAMES = "tutor_gateway_relay_frames_total"
BYTES = "tutor_gateway_relay_bytes_total"
WAIT = "tutor_gateway_engine_wait_seconds"
SESSIONS = "tutor_gateway_sessions"


def metrics(server: RunningServer) -> Scrape:
    return scrape(f"{server.http}/metrics")


def bucket_edges(found: Scrape, name: str, **labels: str) -> list[float]:
    edges = [float(s["le"]) for s in found.series(f"{name}_bucket") if s.items() >= labels.items()]
    return sorted(e for e in edges if e != float("inf"))


def test_rest_requests_are_counted_by_route_template_method_and_status(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = gateway_factory(management_api_keys="metrics-test-key")
    key = {"Authorization": "Bearer metrics-test-key"}
    created = httpx.post(
        f"{gateway.http}/v1/sessions", json={"tutor_id": 1, "student_id": 1}, headers=key
    )
    assert created.status_code == 201
    sid = created.json()["session_id"]
    assert httpx.get(f"{gateway.http}/v1/sessions/{sid}", headers=key).status_code == 200
    unknown = str(uuid.uuid4())
    assert httpx.get(f"{gateway.http}/v1/sessions/{unknown}", headers=key).status_code == 404
    assert httpx.get(f"{gateway.http}/v1/sessions/{sid}").status_code == 401  # no key
    assert httpx.put(f"{gateway.http}/v1/sessions/{sid}", headers=key).status_code == 405
    assert httpx.delete(f"{gateway.http}/mgmt/v1/sessions/{sid}", headers=key).status_code == 204
    for path in (f"/no/such/{unknown}", f"/v1/{unknown}"):
        assert httpx.get(f"{gateway.http}{path}", headers=key).status_code == 404
    assert httpx.get(f"{gateway.http}/healthz").status_code == 200

    found = metrics(gateway)
    item = "/v1/sessions/{session_id}"
    assert found.value(REQUESTS, route="/v1/sessions", method="POST", status="201") == 1
    assert found.value(REQUESTS, route=item, method="GET", status="200") == 1
    assert found.value(REQUESTS, route=item, method="GET", status="404") == 1
    assert found.value(REQUESTS, route=item, method="GET", status="401") == 1  # refused first
    assert found.value(REQUESTS, route=item, method="PUT", status="405") == 1
    assert (
        found.value(REQUESTS, route="/mgmt/v1/sessions/{session_id}", method="DELETE", status="204")
        == 1
    )
    assert found.value(REQUESTS, route="other", method="GET", status="404") == 2
    assert found.value(REQUESTS, route="/healthz", method="GET", status="200") == 1
    # Bounded labels: templates only, never an id from a path.
    routes = {labels["route"] for labels in found.series(REQUESTS)}
    assert not any(sid in route or unknown in route for route in routes), routes
    assert found.value(f"{DURATION}_count", route=item, method="GET") == 3
    assert bucket_edges(found, DURATION, route=item, method="GET") == list(FAST_BUCKETS)


def test_a_conversation_counts_frames_bytes_its_engine_wait_and_its_session_state(
    gateway: RunningServer,
) -> None:
    talking = create_session(gateway, tutor_id=7)
    create_session(gateway, tutor_id=8)  # never connects: its engine never starts
    before = metrics(gateway)
    assert before.value(SESSIONS, tutor_id="7", state="pending") == 1
    assert before.value(SESSIONS, tutor_id="7", state="active") == 0
    assert before.value(SESSIONS, tutor_id="8", state="pending") == 1
    assert before.value(f"{WAIT}_count", outcome="ready") == 0  # exported from the start
    assert before.value(FRAMES, direction="client_to_engine") == 0

    sent = [json.dumps({"type": "text", "content": f"hello metrics {i}"}) for i in (1, 2)]
    replies = []
    with open_ws(gateway, talking) as ws:
        for message in sent:  # the first one waits for the cold start of tutor 7's engine
            ws.send(message)
            replies.append(ws.recv(timeout=60))
        assert all(json.loads(r)["type"] == "text" for r in replies)

        def relayed() -> Scrape | None:
            found = metrics(gateway)
            return found if found.value(FRAMES, direction="engine_to_client") == 2 else None

        found = wait_for(relayed, 10, "both replies counted")
        assert found.value(FRAMES, direction="client_to_engine") == 2
        assert found.value(BYTES, direction="client_to_engine") == sum(len(m) for m in sent)
        assert found.value(BYTES, direction="engine_to_client") == sum(
            len(r.encode()) for r in replies
        )
        # One wait (connect → the engine's handshake), through the cold start; in START_BUCKETS.
        assert found.value(f"{WAIT}_count", outcome="ready") == 1
        assert found.value(f"{WAIT}_sum", outcome="ready") > 0
        assert found.value(f"{WAIT}_count", outcome="timeout") == 0
        assert bucket_edges(found, WAIT, outcome="ready") == list(START_BUCKETS)
        assert found.value(SESSIONS, tutor_id="7", state="active") == 1
        assert found.value(SESSIONS, tutor_id="7", state="pending") == 0
        assert found.value(SESSIONS, tutor_id="8", state="pending") == 1
        assert found.value("tutor_gateway_connections") == 1

    sid = talking["session_id"]
    assert httpx.delete(f"{gateway.http}/v1/sessions/{sid}").status_code == 204
    after = metrics(gateway)
    assert {s["tutor_id"] for s in after.series(SESSIONS)} == {"8"}


def test_an_engine_that_never_gets_ready_is_a_timed_out_wait(
    gateway_factory: GatewayFactory,
) -> None:
    command = f"{sys.executable} -c 'import time; time.sleep(60)'"
    gateway = gateway_factory(engine_command=command, engine_start_timeout_seconds=1)
    session = create_session(gateway, tutor_id=3)
    with open_ws(gateway, session) as ws:
        closed_with(ws, 4503)
    found = metrics(gateway)
    assert found.value(f"{WAIT}_count", outcome="timeout") == 1
    assert found.value(f"{WAIT}_count", outcome="ready") == 0
    assert found.value(SESSIONS, tutor_id="3", state="pending") == 1
    assert found.value(FRAMES, direction="engine_to_client") == 0
