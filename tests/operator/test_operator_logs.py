"""The real operator with ``TUTOR_OPERATOR_LOG_FORMAT=json`` against the API emulator: kopf's
JSON lines (its ``timestamp``, ``severity``, ``object``) with our ``time``, ``level``,
``component`` and ``logger`` beside them, and neither its API token nor the engines' key in
any line."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime

import pytest

from tests.support.cluster import ENGINE_KEY, KubeClient, OperatorProcess, wait_for
from tests.support.kube_emulator import RunningEmulator
from tests.support.kubelet import FakeKubelet

pytestmark = pytest.mark.timeout(120)


def test_the_operator_writes_kopf_json_lines_without_a_secret(
    kube_api: RunningEmulator,
    kube: KubeClient,
    kubelet: FakeKubelet,
    operator_factory: Callable[..., OperatorProcess],
) -> None:
    operator = operator_factory(TUTOR_OPERATOR_LOG_FORMAT="json")
    body = {
        "apiVersion": "tutor.vts.dev/v1alpha1",
        "kind": "TutorSession",
        "metadata": {"name": "logged"},
        "spec": {"tutorId": 3, "studentId": 1, "tokenHash": hashlib.sha256(b"t").hexdigest()},
    }
    assert kube.create("tutorsessions", body).status_code == 201
    wait_for(
        lambda: (
            ((kube.get("tutorsessions", "logged") or {}).get("status") or {}).get("phase")
            == "Active"
        ),
        60,
        "the session to be Active",
    )
    operator.stop()
    log = operator.logs()
    for secret in (kube_api.tokens["operator"], ENGINE_KEY):
        assert secret not in log and secret[-16:] not in log
    records = [json.loads(line) for line in log.splitlines()]  # every line, or it fails here
    assert records
    for record in records:
        assert record["component"] == "operator", record
        assert record["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}, record
        assert datetime.fromisoformat(record["time"]).utcoffset().total_seconds() == 0
        assert isinstance(record["logger"], str) and isinstance(record["message"], str)
        assert "severity" in record and "timestamp" in record  # kopf's own JSON format
    objects = {(r["object"]["kind"], r["object"]["name"]) for r in records if "object" in r}
    assert ("TutorSession", "logged") in objects and ("TutorEngine", "tutor-3") in objects
