"""The operator's metrics in pieces: API errors by code (its own client against the emulator,
a server that never answers, one that is not there), reconciliations by result, objects by
phase, cold starts once per session. tests/cluster/test_operator_metrics.py scrapes a real
operator."""

from __future__ import annotations

import asyncio
import datetime as dt

import kopf
import pytest
from prometheus_client import generate_latest
from tutor_contract.crd import ENGINE_PHASES, SESSION_PHASES
from tutor_operator.decisions import Listing
from tutor_operator.kube import SESSIONS, Conflict, KubeApi
from tutor_operator.metrics import ENGINE_KIND, SESSION_KIND, OperatorMetrics

from tests.support.cluster import NAMESPACE, KubeClient
from tests.support.kube_emulator import RunningEmulator
from tests.support.metrics import Scrape

from .builders import settings
from .test_kube_api import silent_server
from .test_operator_flow import session_body

pytestmark = pytest.mark.timeout(60)


def exported(metrics: OperatorMetrics) -> Scrape:
    return Scrape.parse(generate_latest(metrics.registry).decode())


def api_with(metrics: OperatorMetrics, url: str, token: str = "", timeout: float = 5) -> KubeApi:
    options = settings(api_server=url, api_token=token, api_timeout=timeout, api_connect_timeout=2)
    return KubeApi.from_settings(options, metrics)


async def test_failed_api_calls_are_counted_by_status_code(
    kube_api: RunningEmulator, kube: KubeClient
) -> None:
    metrics = OperatorMetrics()
    api = api_with(metrics, kube_api.url, kube_api.tokens["operator"])
    kube.create("tutorsessions", session_body("s", 1)).raise_for_status()
    # The 404 an idempotent reconciler expects is no error.
    assert await api.get(SESSIONS, NAMESPACE, "missing") is None
    kube_api.inject("error", methods={"GET"}, resource="tutorsessions")
    with pytest.raises(kopf.TemporaryError, match="500"):
        await api.get(SESSIONS, NAMESPACE, "s")
    kube_api.inject("conflict", methods={"PATCH"}, resource="tutorsessions/status")
    with pytest.raises(Conflict):
        body = {"status": {"phase": "Pending"}}
        await api.patch(SESSIONS, NAMESPACE, "s", body, subresource="status")
    assert await api.get(SESSIONS, NAMESPACE, "s") is not None
    await api.close()
    found = exported(metrics)
    assert found.value("tutor_operator_api_errors_total", code="500") == 1
    assert found.value("tutor_operator_api_errors_total", code="409") == 1
    assert found.total("tutor_operator_api_errors_total") == 2


async def test_timeouts_and_unreachable_servers_have_codes_of_their_own() -> None:
    metrics = OperatorMetrics()
    async with silent_server() as url:
        api = api_with(metrics, url, timeout=0.5)
        with pytest.raises(kopf.TemporaryError, match="no answer"):
            await asyncio.wait_for(api.get(SESSIONS, NAMESPACE, "s"), 30)
        await api.close()
    async with silent_server() as url:
        pass  # closed: nothing listens on its port any more
    api = api_with(metrics, url)
    with pytest.raises(kopf.TemporaryError):
        await asyncio.wait_for(api.get(SESSIONS, NAMESPACE, "s"), 30)
    await api.close()
    found = exported(metrics)
    assert found.value("tutor_operator_api_errors_total", code="timeout") == 1
    assert found.value("tutor_operator_api_errors_total", code="connection") == 1


async def test_reconciliations_are_counted_and_timed_by_result() -> None:
    metrics = OperatorMetrics()
    with metrics.reconciling(ENGINE_KIND):
        pass
    for failure in (kopf.TemporaryError("later"), Conflict("moved")):
        with pytest.raises(kopf.TemporaryError), metrics.reconciling(ENGINE_KIND):
            raise failure
    for failure in (kopf.PermanentError("invalid"), ValueError("bug")):
        with pytest.raises(type(failure)), metrics.reconciling(SESSION_KIND):
            raise failure
    with pytest.raises(asyncio.CancelledError), metrics.reconciling(SESSION_KIND):
        raise asyncio.CancelledError  # shutdown: no reconciliation to count
    found = exported(metrics)
    total = "tutor_operator_reconciliations_total"
    assert found.value(total, kind=ENGINE_KIND, result="ok") == 1
    assert found.value(total, kind=ENGINE_KIND, result="retry") == 2
    assert found.value(total, kind=ENGINE_KIND, result="error") == 0
    assert found.value(total, kind=SESSION_KIND, result="error") == 2
    assert found.value(total, kind=SESSION_KIND, result="ok") == 0
    duration = "tutor_operator_reconcile_duration_seconds_count"
    assert found.value(duration, kind=ENGINE_KIND) == 3
    assert found.value(duration, kind=SESSION_KIND) == 2


def body(uid: str, phase: str | None = None, name: str = "s") -> dict[str, object]:
    status = {"phase": phase} if phase else {}
    return {"metadata": {"uid": uid, "name": name, "namespace": NAMESPACE}, "status": status}


def test_objects_by_phase_follow_the_watch_events_and_the_re_lists() -> None:
    listings: dict[str, Listing] = {}
    metrics = OperatorMetrics()
    metrics.use_listings(listings)
    for event, obj in [
        (None, body("a")),  # no status yet: Pending
        ("ADDED", body("b", "Pending")),
        ("MODIFIED", body("b", "Active")),
        ("ADDED", body("c", "Active")),
        ("DELETED", body("c", "Active")),
    ]:
        metrics.session_event(event, obj)
    metrics.engine_event("ADDED", body("e", "Ready"))
    found = exported(metrics)
    sessions = {p: found.value("tutor_operator_sessions", phase=p) for p in SESSION_PHASES}
    assert sessions == {"Pending": 1, "Active": 1, "Expired": 0, "Failed": 0}
    engines = {p: found.value("tutor_operator_engines", phase=p) for p in ENGINE_PHASES}
    assert engines == {"Pending": 0, "Ready": 1, "Idle": 0, "ScaledDown": 0, "Failed": 0}
    # A re-list that no longer shows "a" (its DELETED event lost in a watch gap) drops it.
    listings["sessions"] = Listing(started=float("inf"), uids=frozenset({"b"}))
    found = exported(metrics)
    assert found.value("tutor_operator_sessions", phase="Pending") == 0
    assert found.value("tutor_operator_sessions", phase="Active") == 1


def test_a_cold_start_is_observed_once_per_session() -> None:
    metrics = OperatorMetrics()
    created = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=42)
    metrics.activated(NAMESPACE, "s", created, 3)
    metrics.activated(NAMESPACE, "s", created, 3)  # active again after its pod was replaced
    metrics.activated(NAMESPACE, "t", created, 3)
    found = exported(metrics)
    assert found.value("tutor_operator_cold_start_seconds_count", tutor_id="3") == 2
    assert 84 <= found.value("tutor_operator_cold_start_seconds_sum", tutor_id="3") < 3600
    assert found.value("tutor_operator_cold_start_seconds_bucket", tutor_id="3", le="30.0") == 0
    assert found.value("tutor_operator_cold_start_seconds_bucket", tutor_id="3", le="60.0") == 2
    # Gone (its DELETED event): a new session of the same name is a new cold start.
    metrics.session_event("DELETED", body("uid-s", "Active", name="s"))
    metrics.activated(NAMESPACE, "s", created, 3)
    assert exported(metrics).value("tutor_operator_cold_start_seconds_count", tutor_id="3") == 3
