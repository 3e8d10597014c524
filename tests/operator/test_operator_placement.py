"""Pinning is placement: a pod that goes takes no session with it, and the engine's
``readyEndpoints`` follow its pods on their events, not at the operator's next pass.
Real operator, emulator (with the chart's RBAC) and fake kubelet."""

from __future__ import annotations

import time
from typing import Any

import pytest
from tutor_contract.crd import READY_ENDPOINTS

from tests.support.cluster import KubeClient, wait_for

from .test_engine_pods import admin_engine
from .test_operator_flow import session_body, status, wait_phase

pytestmark = pytest.mark.timeout(120)

# Seconds between the operator's passes over every engine: far beyond what the test waits,
# so only the operator's handling of pod events can make it in time.
SLOW_LOOP = "300"
PROMPT = 10.0  # seconds


def ready_endpoints(kube: KubeClient, engine: str) -> list[str]:
    return status(kube, "tutorengines", engine).get(READY_ENDPOINTS) or []


def test_a_deleted_pods_session_moves_and_its_endpoint_goes_at_once(
    kube: KubeClient, kubelet: Any, operator_factory: Any
) -> None:
    operator_factory(TUTOR_OPERATOR_RECONCILE_INTERVAL=SLOW_LOOP)
    engine = admin_engine(34, minReplicas=2, maxReplicas=2)
    kube.create("tutorengines", engine).raise_for_status()
    both = wait_for(
        lambda: len(e := ready_endpoints(kube, "tutor-34")) == 2 and e, 40, "two ready pods"
    )
    assert both == sorted(both) and all(e.startswith("http://127.") for e in both)

    # Two sessions, one per pod (the least loaded pod takes each).
    kube.create("tutorsessions", session_body("a", 34)).raise_for_status()
    first = wait_phase(kube, "tutorsessions", "a", "Active")
    kube.create("tutorsessions", session_body("b", 34)).raise_for_status()
    second = wait_phase(kube, "tutorsessions", "b", "Active")
    assert first["pod"] != second["pod"]
    assert sorted([first["endpoint"], second["endpoint"]]) == both

    kube.delete("pods", first["pod"]).raise_for_status()
    started = time.monotonic()
    moved = wait_for(
        lambda: (
            (s := status(kube, "tutorsessions", "a")).get("pod") == second["pod"]
            and s.get("phase") == "Active"
            and s
        ),
        PROMPT,
        "session a on the pod that stays",
    )
    assert moved["endpoint"] == second["endpoint"]
    wait_for(
        lambda: first["endpoint"] not in ready_endpoints(kube, "tutor-34"),
        PROMPT - (time.monotonic() - started),
        "the deleted pod's endpoint to leave readyEndpoints",
    )
    assert second["endpoint"] in ready_endpoints(kube, "tutor-34")
    assert status(kube, "tutorsessions", "b")["pod"] == second["pod"]  # b stays where it was

    # The replacement pod is listed once ready.
    again = wait_for(
        lambda: len(e := ready_endpoints(kube, "tutor-34")) == 2 and e, 40, "the new pod listed"
    )
    assert again == sorted(again) and second["endpoint"] in again
    assert first["endpoint"] not in again
