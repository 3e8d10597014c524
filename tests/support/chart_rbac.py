"""The chart's RBAC, rendered by the real Helm engine, as the emulator enforces it.

``charts/tutor-serving`` is rendered with helm-python-sdk (as ``tests/chart`` does) into the
test namespace; its ServiceAccounts, Roles, ClusterRoles and their bindings are what the
emulator authorizes with, and each component's identity is the ``serviceAccountName`` of its
Deployment's pod template (what its pods would run as). Helm hooks (the uninstall cleanup
job's account) are left out: they exist only while the hook runs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import pathlib
from typing import Any

import yaml

CHART = pathlib.Path(__file__).resolve().parents[2] / "charts" / "tutor-serving"
RELEASE = "tutor"
RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
COMPONENT = "app.kubernetes.io/component"


@dataclasses.dataclass(frozen=True)
class ChartRbac:
    """The RBAC manifests and the ServiceAccount each component's pods use."""

    manifests: tuple[dict[str, Any], ...]
    accounts: dict[str, str]  # component ("operator", "gateway") -> ServiceAccount name


def render(namespace: str, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every manifest of the chart (not NOTES, not the CRDs) rendered into ``namespace``."""
    import helm_python as helm  # imported here: only tests that need the chart pay for it

    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values or {})
        out = chart.render(values or {}, name=RELEASE, namespace=namespace)
    return [
        doc
        for path, text in sorted(out.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@functools.cache
def _chart_rbac(namespace: str) -> ChartRbac:
    manifests, accounts = [], {}
    for doc in render(namespace):
        meta = doc.get("metadata") or {}
        if "helm.sh/hook" in (meta.get("annotations") or {}):
            continue
        if doc["kind"] in RBAC_KINDS:
            manifests.append(doc)
        elif doc["kind"] == "Deployment":
            component = (meta.get("labels") or {}).get(COMPONENT, meta["name"])
            pod = doc["spec"]["template"]["spec"]
            accounts[component] = pod.get("serviceAccountName") or "default"
    return ChartRbac(tuple(manifests), accounts)


def chart_rbac(namespace: str) -> ChartRbac:
    """The chart's RBAC for a release in ``namespace`` (rendered once per test process)."""
    cached = _chart_rbac(namespace)
    return ChartRbac(copy.deepcopy(cached.manifests), dict(cached.accounts))
