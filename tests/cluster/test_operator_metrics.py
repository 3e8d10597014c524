"""The operator's and the cluster-mode gateway's metrics, scraped from real processes: the
operator (``python -m tutor_operator`` with ``TUTOR_OPERATOR_METRICS_PORT``) and a gateway in
kubernetes mode against the API emulator, engines run by the fake kubelet."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import httpx
import pytest

from tests.cluster.test_gateway_cluster import cluster_gateway
from tests.gateway.helpers import create_session, open_ws, say
from tests.support.chart_rbac import chart_rbac
from tests.support.cluster import NAMESPACE, KubeClient, OperatorProcess, wait_for
from tests.support.kube_emulator import RunningEmulator
from tests.support.kubelet import FakeKubelet
from tests.support.metrics import Scrape, scrape
from tests.support.processes import free_port

RECONCILED = "tutor_operator_reconciliations_total"
COLD_STARTS = "tutor_operator_cold_start_seconds_count"


def answering(url: str) -> Scrape | None:
    with contextlib.suppress(httpx.HTTPError):
        return scrape(url)
    return None


@pytest.mark.timeout(180)
def test_the_operator_counts_reconciliations_phases_api_errors_and_one_cold_start(
    kube_api: RunningEmulator,
    kube: KubeClient,
    kubelet: FakeKubelet,
    operator_factory: Callable[..., OperatorProcess],
    gateway_factory,
) -> None:
    operator_user = (
        f"system:serviceaccount:{NAMESPACE}:{chart_rbac(NAMESPACE).accounts['operator']}"
    )
    # The operator's first session status write fails once: a retry, and an API error.
    fault = kube_api.inject(
        "error", methods={"PATCH"}, resource="tutorsessions/status", user=operator_user
    )
    port = free_port()
    operator_factory(TUTOR_OPERATOR_METRICS_PORT=str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    started = wait_for(lambda: answering(url), 30, "the operator's /metrics")
    assert started.value("tutor_operator_sessions", phase="Active") == 0
    assert started.value("process_resident_memory_bytes") is not None

    gateway = cluster_gateway(gateway_factory, kube_api.url)
    session = create_session(gateway, tutor_id=3)
    waiting = scrape(f"{gateway.http}/metrics")
    assert waiting.total("tutor_gateway_sessions", tutor_id="3") == 1  # pending or active
    with open_ws(gateway, session) as ws:
        assert "Tutor 3 heard" in say(ws, "hello metrics")["content"]

    def settled() -> Scrape | None:
        found = scrape(url)
        if found.value("tutor_operator_sessions", phase="Active") != 1:
            return None
        return found if found.value(COLD_STARTS, tutor_id="3") == 1 else None

    found = wait_for(settled, 60, "the session Active in the operator's metrics")
    assert fault.hits == 1
    assert found.value("tutor_operator_api_errors_total", code="500") == 1
    assert found.total(RECONCILED, result="retry") >= 1
    assert found.value(RECONCILED, kind="TutorSession", result="ok") >= 1
    assert found.value(RECONCILED, kind="TutorEngine", result="ok") >= 1
    assert found.value("tutor_operator_reconcile_duration_seconds_count", kind="TutorEngine") >= 1
    assert found.value("tutor_operator_engines", phase="Ready") == 1
    assert found.value("tutor_operator_cold_start_seconds_sum", tutor_id="3") >= 0

    on_gateway = scrape(f"{gateway.http}/metrics")
    assert on_gateway.value("tutor_gateway_sessions", tutor_id="3", state="active") == 1
    assert on_gateway.value("tutor_gateway_sessions", tutor_id="3", state="pending") == 0
    assert on_gateway.value("tutor_gateway_engine_wait_seconds_count", outcome="ready") == 1

    # Later passes over the engine keep the session Active: its cold start stays one.
    passes = found.value(RECONCILED, kind="TutorEngine", result="ok") or 0
    later = wait_for(
        lambda: (
            (s := scrape(url)).value(RECONCILED, kind="TutorEngine", result="ok") >= passes + 3
            and s
        ),
        30,
        "three more reconciliations",
    )
    assert later.value(COLD_STARTS, tutor_id="3") == 1

    assert httpx.delete(f"{gateway.http}/v1/sessions/{session['session_id']}").status_code == 204
    wait_for(lambda: scrape(url).total("tutor_operator_sessions") == 0, 30, "the session gone")
    gone = scrape(f"{gateway.http}/metrics")
    assert not [s for s in gone.series("tutor_gateway_sessions") if s["tutor_id"] == "3"]
