"""The contract the gateway and the operator share lives in ``tutor_contract.crd``, once."""

from __future__ import annotations

import ast
import datetime as dt
import pathlib

import pytest
import yaml
from tutor_contract import crd

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Words Kubernetes itself uses for pods (their phase, their Ready condition): the operator
# reads pods with them, which is not our contract spelled again.
KUBERNETES_POD_WORDS = {"Ready", "Failed", "Succeeded"}


def _crd_enum(name: str, path: list[str]) -> list[str]:
    doc = yaml.safe_load((ROOT / "crds" / name).read_text())
    node = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for key in path:
        node = node["properties"][key]
    return node["enum"]


def test_the_engine_crd_declares_the_contracts_ready_endpoints() -> None:
    doc = yaml.safe_load((ROOT / "crds" / "tutorengines.yaml").read_text())
    status = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["properties"][crd.READY_ENDPOINTS]["items"] == {"type": "string"}


def test_the_crds_allow_exactly_the_contracts_phases() -> None:
    assert _crd_enum("tutorsessions.yaml", ["status", "phase"]) == list(crd.SESSION_PHASES)
    assert _crd_enum("tutorengines.yaml", ["status", "phase"]) == list(crd.ENGINE_PHASES)
    for name, plural, kind in (
        ("tutorsessions.yaml", crd.SESSION_PLURAL, crd.SESSION_KIND),
        ("tutorengines.yaml", crd.ENGINE_PLURAL, crd.ENGINE_KIND),
    ):
        doc = yaml.safe_load((ROOT / "crds" / name).read_text())
        assert doc["spec"]["group"] == crd.GROUP
        assert doc["spec"]["versions"][0]["name"] == crd.VERSION
        assert (doc["spec"]["names"]["plural"], doc["spec"]["names"]["kind"]) == (plural, kind)


def _literals(package: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for source in (ROOT / package).rglob("*.py"):
        tree = ast.parse(source.read_text())
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in docstrings:
                    found.setdefault(node.value, []).append(str(source.relative_to(ROOT)))
    return found


def test_no_phase_reason_or_label_is_spelled_outside_the_contract() -> None:
    words = {
        *crd.SESSION_PHASES,
        *crd.ENGINE_PHASES,
        *crd.REASONS,
        crd.READY,
        crd.RECONCILED,
        *crd.LABEL_KEYS,
        crd.GROUP,
        crd.API_VERSION,
        crd.READY_ENDPOINTS,
    }
    for package, allowed in (
        ("gateway/tutor_gateway", set()),
        ("operator/tutor_operator", KUBERNETES_POD_WORDS),
    ):
        again = {w: where for w, where in _literals(package).items() if w in words - allowed}
        assert not again, f"{package} spells contract words itself: {again}"


def test_times_round_trip_in_both_precisions() -> None:
    moment = dt.datetime(2026, 11, 25, 12, 0, 1, 250000, tzinfo=dt.UTC)
    assert crd.format_time(moment) == "2026-11-25T12:00:01Z"
    assert crd.parse_time("2026-11-25T12:00:01.250000Z") == moment
    assert crd.parse_time("2026-11-25T13:00:01.25+01:00") == moment
    assert crd.parse_time("not a time") is None and crd.parse_time(None) is None
