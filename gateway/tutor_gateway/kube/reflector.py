"""A watch-fed cache of one namespace's objects of one kind (list, then watch; re-list on error).

The model is kubespawner's reflector: readers use the dict, never the API, and a condition
wakes those waiting for an object to change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from lightkube import AsyncClient
from lightkube.types import OnErrorAction, OnErrorResult

log = logging.getLogger("tutor_gateway.kube")

Obj = dict[str, Any]
Listener = Callable[[str, Obj], Awaitable[None]]  # (event type, object)


def _give_up(_: Exception, count: int) -> OnErrorResult:
    """Retry a broken watch a few times, then let the reflector re-list."""
    if count > 3:
        return OnErrorResult(OnErrorAction.RAISE)
    return OnErrorResult(OnErrorAction.RETRY, sleep=min(2**count * 0.25, 5))


class Reflector:
    """``objects`` mirrors the API's objects by name; listeners hear every change."""

    def __init__(self, client: AsyncClient, resource: Any, namespace: str) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.objects: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        self.changed = asyncio.Condition()
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def _apply(self, event: str, obj: Obj) -> None:
        """Update the cache and tell the listeners (who still find a deleted object cached)."""
        name = obj["metadata"]["name"]
        if event != "DELETED":
            self.objects[name] = obj
        for listener in self._listeners:
            try:
                await listener(event, obj)
            except Exception:
                log.exception("listener failed on %s %s", event, name)
        if event == "DELETED":
            self.objects.pop(name, None)
        async with self.changed:
            self.changed.notify_all()

    async def _list(self) -> str:
        listing = self.client.list(self.resource, namespace=self.namespace)
        fresh = {item.metadata.name: item.to_dict() async for item in listing}
        for name in set(self.objects) - set(fresh):
            await self._apply("DELETED", self.objects[name])
        for obj in fresh.values():
            await self._apply(
                "MODIFIED" if obj["metadata"]["name"] in self.objects else "ADDED", obj
            )
        return listing.resourceVersion

    async def run(self) -> None:
        """List and watch until cancelled; back off and re-list after errors."""
        backoff = 0.5
        while True:
            try:
                version = await self._list()
                self.synced.set()
                backoff = 0.5
                async for event, item in self.client.watch(
                    self.resource,
                    namespace=self.namespace,
                    resource_version=version,
                    on_error=_give_up,
                ):
                    await self._apply(event, item.to_dict())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "watch of %s failed (%s); re-listing in %.1fs",
                    self.resource.__name__,
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds after some change (bound it with asyncio.timeout)."""
        async with self.changed:
            await self.changed.wait_for(predicate)
