"""Pure translation between sessions and TutorSession resources."""

from __future__ import annotations

import pytest
from tutor_gateway.kube.resources import (
    activity_patch,
    build_session,
    endpoint_of,
    not_routable_reason,
    seed_status,
    session_of,
)

pytestmark = pytest.mark.unit

HASH = "a" * 64


def test_built_session_holds_the_hash_and_the_identity() -> None:
    obj = build_session("sid-1", 3, 4, "kb-7", HASH, 3600.0)
    assert obj["apiVersion"] == "tutor.vts.dev/v1alpha1" and obj["kind"] == "TutorSession"
    assert obj["metadata"]["name"] == "sid-1"
    assert obj["metadata"]["labels"]["tutor.vts.dev/tutor-id"] == "3"
    assert obj["spec"] == {
        "tutorId": 3,
        "studentId": 4,
        "kbId": "kb-7",
        "tokenHash": HASH,
        "timeoutSeconds": 3600,
    }
    assert "kbId" not in build_session("s", 1, 1, None, HASH, 0.2)["spec"]
    assert build_session("s", 1, 1, None, HASH, 0.2)["spec"]["timeoutSeconds"] == 1


def test_session_of_reads_times_and_phase() -> None:
    obj = build_session("sid", 1, 2, None, HASH, 60)
    obj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    session = session_of(obj, now=0)
    assert (session.session_id, session.tutor_id, session.student_id) == ("sid", 1, 2)
    assert session.status == "active" and session.created_at == 1767225600.0
    assert session.last_activity == session.created_at
    obj["status"] = {"phase": "Active", "lastActivity": "2026-01-01T00:01:00Z"}
    assert session_of(obj, now=0).last_activity == 1767225660.0


@pytest.mark.parametrize(
    ("phase", "status"),
    [(None, "active"), ("Pending", "active"), ("Active", "active"), ("Failed", "failed")],
)
def test_seed_status(phase, status) -> None:
    assert seed_status(phase) == status


def test_only_active_sessions_are_routable() -> None:
    obj = {"status": {"phase": "Pending", "endpoint": "http://10.0.0.1:8000"}}
    assert endpoint_of(obj) is None
    obj["status"]["phase"] = "Active"
    assert endpoint_of(obj) == "http://10.0.0.1:8000"
    assert endpoint_of({}) is None


def test_not_routable_reason_comes_from_the_ready_condition() -> None:
    obj = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "Loading", "message": "models"}
            ],
        }
    }
    assert not_routable_reason(obj) == "Loading: models"
    assert not_routable_reason({"status": {"phase": "Pending"}}) == "Pending"


def test_activity_patch_is_rfc3339_with_sub_second_precision() -> None:
    """Whole seconds would make a session up to 1 s idler than it is (issue 10, point 8)."""
    patch = activity_patch(1767225600.25)
    assert patch == {"status": {"lastActivity": "2026-01-01T00:00:00.250000Z"}}
    assert activity_patch(1767225600.0)["status"]["lastActivity"] == "2026-01-01T00:00:00.000000Z"
    obj = build_session("sid", 1, 2, None, HASH, 60)
    obj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    obj["status"] = patch["status"]
    assert session_of(obj, now=0).last_activity == 1767225600.25
