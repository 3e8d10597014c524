"""Kill the operator (SIGKILL) mid-flow and start it again: it converges, no duplicates."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support.cluster import KubeClient, wait_for

from .test_operator_flow import session_body, status

pytestmark = pytest.mark.timeout(150)
SESSIONS = {"r-1": 21, "r-2": 21, "r-3": 21, "r-4": 22, "r-5": 21, "r-6": 22}


def all_active(kube: KubeClient, names: list[str]) -> bool:
    return all(status(kube, "tutorsessions", n).get("phase") == "Active" for n in names)


def test_killed_and_restarted_operator_converges(
    kube: KubeClient, kubelet: Any, operator_factory: Any
) -> None:
    first = operator_factory()
    for name in ("r-1", "r-2", "r-4"):
        kube.create("tutorsessions", session_body(name, SESSIONS[name])).raise_for_status()
    time.sleep(0.4)  # somewhere between creating engines, Deployments and placing sessions
    first.kill()

    # Sessions keep arriving while no operator runs; then it comes back, twice killed again.
    kube.create("tutorsessions", session_body("r-3", 21)).raise_for_status()
    for delay in (0.7, 1.5):
        again = operator_factory()
        time.sleep(delay)
        again.kill()
    kube.create("tutorsessions", session_body("r-5", 21)).raise_for_status()
    kube.create("tutorsessions", session_body("r-6", 22)).raise_for_status()
    operator_factory()
    wait_for(lambda: all_active(kube, list(SESSIONS)), 60, "every session to be Active")

    # Exactly one engine, Deployment and Service per tutor; pods match replicas; nothing lost.
    assert sorted(e["metadata"]["name"] for e in kube.list("tutorengines")) == [
        "tutor-21",
        "tutor-22",
    ]
    assert sorted(d["metadata"]["name"] for d in kube.list("deployments")) == [
        "tutor-21",
        "tutor-22",
    ]
    assert sorted(s["metadata"]["name"] for s in kube.list("services")) == [
        "tutor-21",
        "tutor-22",
    ]
    pods = {p["metadata"]["name"] for p in kube.list("pods")}
    for name in SESSIONS:
        assert status(kube, "tutorsessions", name)["pod"] in pods
    for deployment in kube.list("deployments"):
        selector = f"tutor.vts.dev/engine={deployment['metadata']['name']}"
        assert len(kube.list("pods", selector)) == deployment["spec"]["replicas"]
    assert sorted(s["metadata"]["name"] for s in kube.list("tutorsessions")) == sorted(SESSIONS)


def test_restart_keeps_placements_and_repairs_what_changed_meanwhile(
    kube: KubeClient, kubelet: Any, operator_factory: Any
) -> None:
    first = operator_factory()
    for name in ("r-1", "r-4"):
        kube.create("tutorsessions", session_body(name, SESSIONS[name])).raise_for_status()
    wait_for(lambda: all_active(kube, ["r-1", "r-4"]), 40, "sessions to be Active")
    placed = {n: status(kube, "tutorsessions", n)["pod"] for n in ("r-1", "r-4")}
    first.kill()

    # While it is down: tutor 22's pod dies, and someone deletes tutor 21's Service.
    kube.delete("pods", placed["r-4"])
    kube.delete("services", "tutor-21")
    operator_factory()

    wait_for(lambda: kube.get("services", "tutor-21"), 20, "the Service to be recreated")
    moved = wait_for(
        lambda: (
            (s := status(kube, "tutorsessions", "r-4")).get("phase") == "Active"
            and s["pod"] != placed["r-4"]
            and s
        ),
        40,
        "r-4 to move to a new pod",
    )
    assert moved["pod"] in {p["metadata"]["name"] for p in kube.list("pods")}
    assert status(kube, "tutorsessions", "r-1")["pod"] == placed["r-1"]
