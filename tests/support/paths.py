"""REST paths of the Kubernetes resources the tests use (one builder for clients and fakes)."""

from __future__ import annotations

API_VERSIONS = {
    "tutorsessions": "tutor.vts.dev/v1alpha1",
    "tutorengines": "tutor.vts.dev/v1alpha1",
    "deployments": "apps/v1",
    "poddisruptionbudgets": "policy/v1",
}


def rest_path(plural: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    """The path of a namespaced collection, object or subresource (core ``v1`` unless listed)."""
    api_version = API_VERSIONS.get(plural, "v1")
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return "/".join(p for p in (root, "namespaces", namespace, plural, name, sub) if p)
