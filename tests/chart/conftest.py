"""Render the chart with the real Helm engine (helm-python-sdk, offline, no cluster)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tutor-serving"
ALL_ON = Path(__file__).with_name("values-all-on.yaml")
RELEASE, NAMESPACE = "tutor", "tutor-system"

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


def all_on_values() -> dict[str, Any]:
    """The values file that turns every option on."""
    return yaml.safe_load(ALL_ON.read_text())


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(str(CHART)) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: helm.Chart) -> Render:
    """Render ``values`` (schema-checked first) into a list of manifests, without NOTES."""

    def run(values: dict[str, Any] | None = None) -> list[Manifest]:
        values = values or {}
        chart.validate_schema(values)
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE)
        return [
            doc
            for path, text in sorted(out.items())
            if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text)
            if doc
        ]

    return run


def find(manifests: list[Manifest], kind: str, suffix: str = "") -> Manifest:
    """The one manifest of ``kind`` whose name ends with ``suffix``."""
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{len(found)} {kind} named *{suffix}"
    return found[0]


def pod_specs(manifests: list[Manifest]) -> dict[str, Manifest]:
    """Every pod spec the chart renders, by "Kind/name"."""
    specs = {}
    for m in manifests:
        name = f"{m['kind']}/{m['metadata']['name']}"
        if m["kind"] == "Pod":
            specs[name] = m["spec"]
        elif m["kind"] in ("Deployment", "StatefulSet", "Job"):
            specs[name] = m["spec"]["template"]["spec"]
    return specs
