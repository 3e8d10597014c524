"""Authentication and RBAC authorization as kube-apiserver does them, for the API emulator.

Pure functions of plain data (the stored Role/ClusterRole/RoleBinding/ClusterRoleBinding
objects), so the rules are unit-tested without a server. The matching follows
``plugin/pkg/auth/authorizer/rbac`` (``rbac.go``, ``subject_locator.go``) and the messages
``staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go``:

- a rule matches a resource request when its ``verbs``, ``apiGroups``, ``resources`` (``*``,
  ``plural``, ``plural/subresource`` or ``*/subresource``) and ``resourceNames`` (empty: any;
  else the request must name one of them, so never a ``create`` or a ``list``) all match; a
  non-resource request (discovery, ``/version``) when a ``nonResourceURLs`` entry is the path,
  ``*``, or a prefix ending in ``*``;
- a RoleBinding grants its Role's or ClusterRole's rules in its own namespace only; a
  ClusterRoleBinding grants everywhere and for cluster-scoped and non-resource requests;
- subjects: ``User``, ``Group``, ``ServiceAccount`` (its namespace defaults to the binding's);
- the group ``system:masters`` bypasses authorization (as the real server's privileged group);
- aggregated ClusterRoles (``aggregationRule``) are not aggregated: their own ``rules`` count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"
RBAC_GROUP = "rbac.authorization.k8s.io"
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")


@dataclasses.dataclass(frozen=True)
class User:
    """An authenticated identity: a user name and its groups."""

    name: str
    groups: tuple[str, ...] = ()


def service_account_user(namespace: str, name: str) -> User:
    """The identity of a ServiceAccount's token, with the groups the real server adds."""
    return User(
        f"system:serviceaccount:{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED),
    )


ANONYMOUS_USER = User(ANONYMOUS, (UNAUTHENTICATED,))


@dataclasses.dataclass(frozen=True)
class Attributes:
    """What a request asks for, as the apiserver's ``RequestInfo`` sees it."""

    user: User
    verb: str
    resource_request: bool = True
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    namespace: str = ""
    path: str = ""


def request_verb(method: str, *, named: bool, watch: bool) -> str:
    """The RBAC verb of an HTTP request on a resource path."""
    if method in ("GET", "HEAD"):
        return "watch" if watch else ("get" if named else "list")
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return method.lower()


def _has(values: Iterable[str] | None, wanted: str) -> bool:
    values = list(values or [])
    return "*" in values or wanted in values


def rule_allows(rule: dict[str, Any], attrs: Attributes) -> bool:
    """Whether one PolicyRule covers the request."""
    if not _has(rule.get("verbs"), attrs.verb):
        return False
    if not attrs.resource_request:
        return any(
            url == "*"
            or url == attrs.path
            or (url.endswith("*") and attrs.path.startswith(url[:-1]))
            for url in rule.get("nonResourceURLs") or []
        )
    if not _has(rule.get("apiGroups"), attrs.api_group):
        return False
    combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    resources = rule.get("resources") or []
    if not any(
        r == "*"
        or r == combined
        or (attrs.subresource and r.startswith("*/") and r[2:] == attrs.subresource)
        for r in resources
    ):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


def _subject_matches(subject: dict[str, Any], user: User, binding_namespace: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return name == user.name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return user.name == f"system:serviceaccount:{namespace}:{name}"
    return False


@dataclasses.dataclass
class Policy:
    """The RBAC objects of a cluster, indexed for authorization."""

    roles: dict[tuple[str, str], dict[str, Any]] = dataclasses.field(default_factory=dict)
    cluster_roles: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    role_bindings: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    cluster_role_bindings: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def of(cls, objects: Iterable[dict[str, Any]]) -> Policy:
        """Index stored objects (any kinds; only the four RBAC kinds count)."""
        policy = cls()
        for obj in objects:
            kind, meta = obj.get("kind"), obj.get("metadata") or {}
            if kind == "Role":
                policy.roles[(meta.get("namespace") or "", meta["name"])] = obj
            elif kind == "ClusterRole":
                policy.cluster_roles[meta["name"]] = obj
            elif kind == "RoleBinding":
                policy.role_bindings.append(obj)
            elif kind == "ClusterRoleBinding":
                policy.cluster_role_bindings.append(obj)
        return policy

    def _rules(self, ref: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
        if ref.get("kind") == "ClusterRole":
            role = self.cluster_roles.get(ref.get("name", ""))
        elif ref.get("kind") == "Role":
            role = self.roles.get((namespace, ref.get("name", "")))
        else:
            role = None
        return list((role or {}).get("rules") or [])

    def allows(self, attrs: Attributes) -> bool:
        """Whether any binding of the user grants the request (RBAC only allows)."""
        if MASTERS in attrs.user.groups:
            return True
        for binding in self.cluster_role_bindings:
            if any(_subject_matches(s, attrs.user, "") for s in binding.get("subjects") or []):
                if any(rule_allows(r, attrs) for r in self._rules(binding["roleRef"], "")):
                    return True
        if not attrs.resource_request or not attrs.namespace:
            return False
        for binding in self.role_bindings:
            namespace = binding["metadata"].get("namespace") or ""
            if namespace != attrs.namespace:
                continue
            if any(
                _subject_matches(s, attrs.user, namespace) for s in binding.get("subjects") or []
            ):
                if any(rule_allows(r, attrs) for r in self._rules(binding["roleRef"], namespace)):
                    return True
        return False


def forbidden(attrs: Attributes) -> tuple[str, dict[str, Any]]:
    """The message and details of the real server's 403 for a denied request."""
    user = attrs.user.name
    if not attrs.resource_request:
        return f'forbidden: User "{user}" cannot {attrs.verb} path "{attrs.path}"', {}
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    what = (
        f'User "{user}" cannot {attrs.verb} resource "{resource}" in API group "{attrs.api_group}"'
    )
    where = f'the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    reason = f"{what} in {where}" if attrs.namespace else f"{what} {where}"
    qualified = f"{attrs.resource}.{attrs.api_group}" if attrs.api_group else attrs.resource
    subject = f'{qualified} "{attrs.name}"' if attrs.name else qualified
    details: dict[str, Any] = {"kind": attrs.resource}
    if attrs.api_group:
        details["group"] = attrs.api_group
    if attrs.name:
        details = {"name": attrs.name, **details}
    return f"{subject} is forbidden: {reason}", details


def bootstrap_policy() -> list[dict[str, Any]]:
    """The default ClusterRoles and bindings every cluster has that concern our clients.

    ``system:discovery`` and ``system:public-info-viewer`` (discovery, ``/version``,
    health) for authenticated users, the latter also for unauthenticated ones, and
    ``cluster-admin`` bound to ``system:masters``.
    """

    def cluster_role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": f"{RBAC_GROUP}/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "rules": rules,
        }

    def binding(name: str, role: str, groups: list[str]) -> dict[str, Any]:
        return {
            "apiVersion": f"{RBAC_GROUP}/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": g} for g in groups],
        }

    info = ["/healthz", "/livez", "/readyz", "/version", "/version/"]
    everyone = [AUTHENTICATED, UNAUTHENTICATED]
    discovery = ["/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*", *info]
    return [
        cluster_role("cluster-admin", [
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
            {"nonResourceURLs": ["*"], "verbs": ["*"]},
        ]),
        binding("cluster-admin", "cluster-admin", [MASTERS]),
        cluster_role("system:discovery", [{"nonResourceURLs": discovery, "verbs": ["get"]}]),
        binding("system:discovery", "system:discovery", [AUTHENTICATED]),
        cluster_role("system:public-info-viewer", [{"nonResourceURLs": info, "verbs": ["get"]}]),
        binding("system:public-info-viewer", "system:public-info-viewer", everyone),
    ]  # fmt: skip
