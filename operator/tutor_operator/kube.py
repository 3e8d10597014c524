"""A small async wrapper over the official client: JSON in, JSON out, kopf errors out.

Calls run in threads (the client is synchronous). 404 and 409 on create/delete are normal in
an idempotent reconciler and come back as ``None``; everything else becomes a kopf error:
``PermanentError`` for a request the API rejects as invalid, ``TemporaryError`` otherwise.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from .settings import OperatorSettings

MERGE_PATCH = "application/merge-patch+json"
RETRY_DELAY = 5.0


class Conflict(kopf.TemporaryError):
    """409: the object changed since the ``resourceVersion`` a write named."""


def resource_path(
    api_version: str,
    plural: str,
    namespace: str | None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The REST path of a collection or object, e.g. ``/apis/apps/v1/namespaces/ns/deployments``."""
    parts = ["/api/v1" if api_version == "v1" else f"/apis/{api_version}"]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def _reason(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or exc.reason or str(exc.status)
    except (ValueError, AttributeError):
        return exc.reason or str(exc.status)


class KubeApi:
    """JSON requests to the Kubernetes API with the operator's credentials."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.client = client

    @classmethod
    def from_settings(cls, settings: OperatorSettings) -> KubeApi:
        """An explicit ``api_server`` (tests), else in-cluster config, else the kubeconfig."""
        if settings.api_server:
            config = kubernetes.client.Configuration()
            config.host = settings.api_server
            config.verify_ssl = False
        else:
            config = kubernetes.client.Configuration()
            try:
                kubernetes.config.load_incluster_config(client_configuration=config)
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(client_configuration=config)
        return cls(kubernetes.client.ApiClient(config))

    def _call(self, method: str, path: str, body: Any, content_type: str) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, body, _ = self.client.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = self.client.call_api(method, url, header_params=headers, body=body)
        data = response.read()
        if not 200 <= response.status < 300:
            raise ApiException(http_resp=response)
        return json.loads(data or b"null")

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        missing_ok: bool = False,
        exists_ok: bool = False,
    ) -> Any:
        """One API call; ``None`` for an allowed 404/409, kopf errors for the rest."""
        try:
            return await asyncio.to_thread(self._call, method, path, body, content_type)
        except ApiException as exc:
            if (exc.status == 404 and missing_ok) or (exc.status == 409 and exists_ok):
                return None
            message = f"{method} {path}: {exc.status} {_reason(exc)}"
            if exc.status in (400, 422):
                raise kopf.PermanentError(message) from exc
            if exc.status == 409:
                raise Conflict(message, delay=RETRY_DELAY) from exc
            raise kopf.TemporaryError(message, delay=RETRY_DELAY) from exc
        except (HTTPError, OSError) as exc:
            raise kopf.TemporaryError(f"{method} {path}: {exc}", delay=RETRY_DELAY) from exc

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST ``body``; ``None`` if it already exists."""
        return await self.request("POST", path, body, exists_ok=True)

    async def get(self, path: str) -> dict[str, Any] | None:
        """GET; ``None`` if the object is gone."""
        return await self.request("GET", path, missing_ok=True)

    async def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch; the object after it, or ``None`` if it is gone (``Conflict`` on 409)."""
        return await self.request("PATCH", path, body, content_type=MERGE_PATCH, missing_ok=True)

    async def delete(self, path: str) -> None:
        """DELETE; an object already gone is fine."""
        await self.request("DELETE", path, missing_ok=True)

    def close(self) -> None:
        """Release the client's connection pool."""
        self.client.close()
