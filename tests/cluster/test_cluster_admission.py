"""Cluster mode's cold-start admission (MAX_CONCURRENT_COLD_STARTS) against the API emulator:
the gateway counts TutorEngines still starting from its watch-fed cache and refuses a new cold
tutor with 429 while the limit is reached. No operator: the test writes the engines' status."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.cluster import KubeClient, wait_for

from .test_gateway_cluster import cluster_gateway


def engine(kube: KubeClient, tutor: int, status: dict[str, Any]) -> None:
    """A TutorEngine with the given status, as the operator would have written it."""
    body = {
        "apiVersion": "tutor.vts.dev/v1alpha1",
        "kind": "TutorEngine",
        "metadata": {"name": f"tutor-{tutor}"},
        "spec": {"tutorId": tutor},
    }
    if kube.get("tutorengines", f"tutor-{tutor}") is None:
        kube.create("tutorengines", body).raise_for_status()
    kube.patch(
        "tutorengines", f"tutor-{tutor}", {"status": status}, sub="status"
    ).raise_for_status()


READY = {"phase": "Ready", "readyEndpoints": ["http://127.0.0.1:1"]}
PENDING = {"phase": "Pending"}


def test_a_cold_tutor_waits_while_the_limit_of_engines_is_starting(
    kube_api, kube: KubeClient, gateway_factory
) -> None:
    gateway = cluster_gateway(gateway_factory, kube_api.url, max_concurrent_cold_starts=1)
    engines = gateway.app.state.gateway.router.engines

    def sees(tutor: int, phase: str) -> bool:
        # engines.objects, not a reference kept: each (re-)list replaces the dict.
        seen = engines.objects.get(f"tutor-{tutor}") or {}
        return (seen.get("status") or {}).get("phase") == phase

    def post(tutor: int) -> httpx.Response:
        return httpx.post(
            f"{gateway.http}/v1/sessions", json={"tutor_id": tutor, "student_id": tutor}
        )

    engine(kube, 1, READY)
    engine(kube, 2, PENDING)
    wait_for(lambda: sees(1, "Ready") and sees(2, "Pending"), 30, "the gateway's engine cache")

    refused = post(3)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "30"
    detail = refused.json()["detail"]
    assert "MAX_CONCURRENT_COLD_STARTS" in detail and "tutor 3" in detail
    assert kube.list("tutorsessions") == [], "nothing was created for the refused session"

    assert post(1).status_code == 201, "a tutor with a ready engine is never held back"
    assert post(2).status_code == 201, "a session joins the start under way"

    engine(kube, 2, READY)
    wait_for(lambda: sees(2, "Ready"), 30, "tutor 2 ready in the gateway's cache")
    assert post(3).status_code == 201, "a start slot is free again"
    # Tutor 3 has a session and no TutorEngine yet: its start is under way, the slot taken.
    assert post(4).status_code == 429
    assert post(3).status_code == 201
