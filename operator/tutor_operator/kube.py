"""The operator's own API calls: lightkube's async client, JSON in, JSON out, kopf errors out.

kopf keeps its own client for watching and its handler bookkeeping; everything the operator's
code writes or reads goes through ``KubeApi``. Every call is bounded (``api_timeout``): a server
that accepts a connection and never answers costs one timeout, never an engine's lock. 404 and
409 on create/delete are normal in an idempotent reconciler and come back as ``None``;
everything else becomes a kopf error: ``PermanentError`` for a request the API rejects as
invalid, ``TemporaryError`` otherwise.

``CALLS`` lists every call ``KubeApi`` makes as RBAC sees it (group, resource[/subresource],
verb), and ``KubeApi`` refuses any call not in it: the chart's Role is tested against this
table, so the two cannot drift apart unseen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
from collections.abc import Mapping
from typing import Any

import httpx2
import kopf
from lightkube import AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.core.exceptions import ApiError
from lightkube.core.resource import ApiInfo
from lightkube.generic_resource import (
    GenericNamespacedResource,
    GenericNamespacedStatus,
    create_api_info,
)
from lightkube.types import PatchType

from . import GROUP, VERSION
from .metrics import CONNECTION, TIMEOUT, OperatorMetrics
from .names import ENGINE_KIND, ENGINE_PLURAL, MANAGER, SESSION_KIND, SESSION_PLURAL
from .settings import OperatorSettings

RETRY_DELAY = 5.0
ALL_NAMESPACES = "*"


class Conflict(kopf.TemporaryError):
    """409: the object changed since the ``resourceVersion`` a write named."""


class UndeclaredCall(RuntimeError):
    """A call missing from ``CALLS`` (so possibly from the chart's Role): a programming error."""


@dataclasses.dataclass(frozen=True)
class Kind:
    """A namespaced resource the operator calls, and lightkube's generic class for it."""

    group: str
    version: str
    kind: str
    plural: str

    @functools.cached_property
    def resource(self) -> type[GenericNamespacedResource]:
        """lightkube's generic (plain dict) class of this kind, kept out of lightkube's registry.

        Registered generic classes would clash with lightkube's typed models of the built-in
        kinds if anything in the process imported them; typed models would also drop fields
        they do not know from what the operator reads and writes back (PUT).
        """
        info = create_api_info(self.group, self.version, self.kind, self.plural)
        status_info = ApiInfo(
            resource=info.resource,
            parent=info.resource,
            plural=self.plural,
            verbs=["get", "patch", "put"],
            action="status",
        )
        status = type(f"{self.kind}Status", (GenericNamespacedStatus,), {"_api_info": status_info})
        return type(self.kind, (GenericNamespacedResource,), {"_api_info": info, "Status": status})

    def rbac(self, subresource: str | None = None) -> tuple[str, str]:
        """(API group, resource[/subresource]) as a Role names them."""
        return self.group, f"{self.plural}/{subresource}" if subresource else self.plural


SESSIONS = Kind(GROUP, VERSION, SESSION_KIND, SESSION_PLURAL)
ENGINES = Kind(GROUP, VERSION, ENGINE_KIND, ENGINE_PLURAL)
DEPLOYMENTS = Kind("apps", "v1", "Deployment", "deployments")
SERVICES = Kind("", "v1", "Service", "services")
PODS = Kind("", "v1", "Pod", "pods")
PDBS = Kind("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets")

# Every call of the operator's own code (not kopf's): (group, resource) -> RBAC verbs.
CALLS: dict[tuple[str, str], frozenset[str]] = {
    # Re-read after a conflicting pinning patch; re-listed to drop what a watch gap missed;
    # expired sessions are deleted.
    SESSIONS.rbac(): frozenset({"get", "list", "delete"}),
    SESSIONS.rbac("status"): frozenset({"patch"}),
    # Created from the defaults for a tutor; deleted when idle (idlePolicy Delete).
    ENGINES.rbac(): frozenset({"list", "create", "delete"}),
    ENGINES.rbac("status"): frozenset({"patch"}),
    # Created; read and replaced (PUT) when the pod template changes; scaled by merge patch.
    DEPLOYMENTS.rbac(): frozenset({"get", "list", "create", "update", "patch"}),
    SERVICES.rbac(): frozenset({"list", "create"}),
    PDBS.rbac(): frozenset({"list", "create"}),
    # Pods: re-listed; marked while they hold sessions (deletion cost, eviction guards).
    PODS.rbac(): frozenset({"list", "patch"}),
}


def kube_config(settings: OperatorSettings) -> KubeConfig:
    """An explicit ``api_server`` (tests; with ``api_token`` if set), else in-cluster/kubeconfig."""
    if not settings.api_server:
        return KubeConfig.from_env()
    cluster = Cluster(server=settings.api_server, insecure=True)
    return KubeConfig.from_one(cluster=cluster, user=User(token=settings.api_token or None))


def _failure(exc: ApiError | httpx2.HTTPStatusError) -> tuple[int, str]:
    """The status code and message of a failed call.

    lightkube turns only responses typed exactly ``application/json`` into an ``ApiError``;
    the rest (``application/json; charset=utf-8``, say) stay ``HTTPStatusError``.
    """
    if isinstance(exc, ApiError):
        status = exc.status
        return int(status.code or 0), status.message or status.reason or str(status.code)
    response = exc.response
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return response.status_code, message or response.reason_phrase


def _body(obj: Any) -> dict[str, Any]:
    """A plain JSON dict of a lightkube generic object (or of a plain dict)."""
    return json.loads(json.dumps(obj.to_dict() if hasattr(obj, "to_dict") else obj))


class KubeApi:
    """JSON requests to the Kubernetes API with the operator's credentials, each time-bounded."""

    def __init__(
        self, client: AsyncClient, timeout: float, metrics: OperatorMetrics | None = None
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.metrics = metrics  # failed calls count in tutor_operator_api_errors_total

    @classmethod
    def from_settings(
        cls, settings: OperatorSettings, metrics: OperatorMetrics | None = None
    ) -> KubeApi:
        timeout = httpx2.Timeout(settings.api_timeout, connect=settings.api_connect_timeout)
        client = AsyncClient(kube_config(settings), timeout=timeout, field_manager=MANAGER)
        return cls(client, settings.api_timeout, metrics)

    def _failed(self, code: int | str) -> None:
        if self.metrics is not None:
            self.metrics.api_error(code)

    async def _call(
        self,
        verb: str,
        kind: Kind,
        what: str,
        call: Any,
        *,
        subresource: str | None = None,
        missing_ok: bool = False,
        exists_ok: bool = False,
    ) -> Any:
        """Run one lightkube call under a deadline; kopf errors (or ``None``) out."""
        if verb not in CALLS.get(kind.rbac(subresource), ()):
            call.close()
            raise UndeclaredCall(f"{verb} {kind.rbac(subresource)} is not in kube.CALLS")
        try:
            async with asyncio.timeout(self.timeout):
                return await call
        except (ApiError, httpx2.HTTPStatusError) as exc:
            code, text = _failure(exc)
            if (code == 404 and missing_ok) or (code == 409 and exists_ok):
                return None
            self._failed(code)
            message = f"{verb} {what}: {code} {text}"
            if code in (400, 422):
                raise kopf.PermanentError(message) from exc
            if code == 409:
                raise Conflict(message, delay=RETRY_DELAY) from exc
            raise kopf.TemporaryError(message, delay=RETRY_DELAY) from exc
        except TimeoutError as exc:
            self._failed(TIMEOUT)
            message = f"{verb} {what}: no answer within {self.timeout:g}s"
            raise kopf.TemporaryError(message, delay=RETRY_DELAY) from exc
        except (httpx2.HTTPError, OSError) as exc:
            self._failed(TIMEOUT if isinstance(exc, httpx2.TimeoutException) else CONNECTION)
            raise kopf.TemporaryError(f"{verb} {what}: {exc!r}", delay=RETRY_DELAY) from exc

    async def create(
        self, kind: Kind, namespace: str, body: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """POST ``body``; the created object, or ``None`` if it already exists."""
        obj = kind.resource.from_dict(dict(body))
        # lightkube's overloads omit ``namespace`` for namespaced resources; its call takes it.
        call = self.client.create(obj, namespace=namespace)  # type: ignore[call-overload]
        what = f"{kind.plural} {namespace}/{body['metadata']['name']}"
        created = await self._call("create", kind, what, call, exists_ok=True)
        return None if created is None else _body(created)

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        """GET; ``None`` if the object is gone."""
        call = self.client.get(kind.resource, name, namespace=namespace)
        found = await self._call(
            "get", kind, f"{kind.plural} {namespace}/{name}", call, missing_ok=True
        )
        return None if found is None else _body(found)

    async def list(
        self, kind: Kind, namespace: str | None, labels: Mapping[str, str | None] | None = None
    ) -> list[dict[str, Any]]:
        """LIST (all namespaces for ``None``), by label (``None`` values: the key exists)."""

        async def collect() -> list[dict[str, Any]]:
            items = self.client.list(
                kind.resource, namespace=namespace or ALL_NAMESPACES, labels=dict(labels or {})
            )
            return [_body(item) async for item in items]

        return await self._call("list", kind, f"{kind.plural} in {namespace or 'all'}", collect())

    async def patch(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any] | None:
        """Merge-patch; the object after it, or ``None`` if it is gone (``Conflict`` on 409)."""
        res = kind.resource.Status if subresource == "status" else kind.resource
        call = self.client.patch(
            res, name, dict(body), namespace=namespace, patch_type=PatchType.MERGE
        )
        what = f"{kind.plural} {namespace}/{name}" + (f"/{subresource}" if subresource else "")
        after = await self._call(
            "patch", kind, what, call, subresource=subresource, missing_ok=True
        )
        return None if after is None else _body(after)

    async def replace(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT ``body`` (naming its ``resourceVersion``: ``Conflict`` if it moved on)."""
        obj = kind.resource.from_dict(dict(body))
        call = self.client.replace(obj, namespace=namespace)  # type: ignore[call-overload]
        what = f"{kind.plural} {namespace}/{body['metadata']['name']}"
        return _body(await self._call("update", kind, what, call))

    async def delete(self, kind: Kind, namespace: str, name: str) -> None:
        """DELETE; an object already gone is fine."""
        call = self.client.delete(kind.resource, name, namespace=namespace)
        await self._call("delete", kind, f"{kind.plural} {namespace}/{name}", call, missing_ok=True)

    async def close(self) -> None:
        """Release the client's connections."""
        await self.client.close()
