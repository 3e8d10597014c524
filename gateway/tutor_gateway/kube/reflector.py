"""A watch-fed cache of one namespace's objects of one kind: a list+watch reflector.

Modelled on kubespawner's reflector (and client-go's): readers use the dict, never the API, and
a condition wakes those waiting for an object to change.

- LIST, record the list's ``resourceVersion`` and replace the cache wholesale: objects deleted
  while no watch ran disappear, and their removal listeners hear a ``DELETED``.
- WATCH from that version with ``allowWatchBookmarks`` and a server ``timeoutSeconds``. When
  the server ends a watch, the next resumes from the last version seen (events and BOOKMARKs
  advance it) without a re-list.
- 410 Gone (an ``ERROR`` event with code 410, or an HTTP 410): the version is compacted away;
  re-list. A watch that delivers nothing, not even a bookmark, for ``stale_seconds`` (a
  half-open connection, a stuck proxy) is dropped and the cache re-listed.
- Any other failure: back off (exponential, jittered) and re-list.

Lists and watches are plain HTTP requests (lightkube's watch cannot ask for bookmarks, has no
read timeout and re-watches without a version after a 410 instead of re-listing).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
from lightkube.core.resource import api_info

from ..retry import Backoff, jittered

log = logging.getLogger("tutor_gateway.kube")

Obj = dict[str, Any]
QUICK_WATCH_SECONDS = 1.0  # a watch the server ends sooner, with nothing on it, is backed off
Listener = Callable[[str, Obj], Awaitable[None]]  # (event type, object)


@dataclasses.dataclass(frozen=True)
class WatchSettings:
    """Timeouts and back-off of a reflector (GatewaySettings' KUBE_* fields)."""

    request_timeout: float = 10.0  # connect, write, each read of a list; connecting a watch
    watch_timeout: int = 60  # timeoutSeconds asked of the server for one watch
    stale_seconds: float = 75.0  # nothing at all on a watch for this long: drop it, re-list
    retry_initial: float = 0.5
    retry_max: float = 30.0


class WatchGone(Exception):
    """410 Gone: the resourceVersion to resume from is no longer in the server's history."""


class WatchStale(Exception):
    """The watch delivered nothing for too long: the connection is presumed dead."""


class WatchFailed(Exception):
    """The API answered a list or watch with an error."""


def collection_path(resource: Any, namespace: str) -> str:
    """The REST path of ``resource``'s collection in ``namespace`` (a lightkube resource)."""
    info = api_info(resource)
    group, version = info.resource.group, info.resource.version
    root = f"/apis/{group}/{version}" if group else f"/api/{version}"
    return f"{root}/namespaces/{namespace}/{info.plural}"


async def _failure(response: httpx2.Response) -> Exception:
    """The exception for an error answer (a ``Status`` body, or anything else)."""
    try:
        await response.aread()
        body = response.json()
    except (ValueError, httpx2.HTTPError):
        body = None
    status = body if isinstance(body, dict) else {}
    code = status.get("code", response.status_code)
    message = status.get("message") or response.reason_phrase
    if code == 410:
        return WatchGone(message)
    return WatchFailed(f"{code} {status.get('reason') or ''}: {message}".replace("  ", " "))


class Reflector:
    """``objects`` mirrors the API's objects by name; listeners hear every change."""

    def __init__(
        self,
        http: httpx2.AsyncClient,
        resource: Any,
        namespace: str,
        settings: WatchSettings | None = None,
    ) -> None:
        self.http = http
        self.kind = api_info(resource).resource.kind
        self.namespace = namespace
        self.path = collection_path(resource, namespace)
        self.settings = settings or WatchSettings()
        self.objects: dict[str, Obj] = {}
        self.resource_version: str | None = None  # where the next watch resumes
        self.synced = asyncio.Event()
        self.changed = asyncio.Condition()
        self.lists = 0  # completed lists (the first and every re-list)
        self._listeners: list[Listener] = []
        self._backoff = Backoff(jittered(self.settings.retry_initial, self.settings.retry_max))
        self._watch_events = 0  # events and bookmarks received on the current watch

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def _notify(self, event: str, obj: Obj) -> None:
        for listener in self._listeners:
            try:
                await listener(event, obj)
            except Exception:
                log.exception("listener failed on %s %s", event, obj["metadata"].get("name"))

    async def _changed(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _apply(self, event: str, obj: Obj) -> None:
        """Update the cache and tell the listeners (who still find a deleted object cached)."""
        name = obj["metadata"]["name"]
        if event != "DELETED":
            self.objects[name] = obj
        await self._notify(event, obj)
        if event == "DELETED":
            self.objects.pop(name, None)
        await self._changed()

    # -- list --

    async def _list(self) -> None:
        """Replace the cache with a fresh list; what vanished meanwhile is told as DELETED."""
        response = await self.http.get(self.path, timeout=self.settings.request_timeout)
        if response.is_error:
            raise await _failure(response)
        body = response.json()
        version = (body.get("metadata") or {}).get("resourceVersion") or None
        fresh: dict[str, Obj] = {o["metadata"]["name"]: o for o in body.get("items") or []}
        gone = [obj for name, obj in self.objects.items() if name not in fresh]
        # Listeners of deletions still find the object cached, as for a watched DELETED.
        await asyncio.gather(*(self._notify("DELETED", obj) for obj in gone))
        before, self.objects = self.objects, fresh
        for name, obj in fresh.items():
            old = before.get(name)
            if old is None:
                await self._notify("ADDED", obj)
            elif old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                await self._notify("MODIFIED", obj)
        self.resource_version = version
        self.lists += 1
        if gone:
            log.info(
                "re-list of %ss: %d gone while unwatched (%s)",
                self.kind,
                len(gone),
                ", ".join(o["metadata"]["name"][:8] for o in gone[:5]),
            )
        await self._changed()

    # -- watch --

    async def _watch(self) -> None:
        """One watch request from ``resource_version``; returns when the server ends it."""
        self._watch_events = 0
        settings = self.settings
        params = {"watch": "true", "allowWatchBookmarks": "true"}
        params["timeoutSeconds"] = str(settings.watch_timeout)
        if self.resource_version:
            params["resourceVersion"] = self.resource_version
        timeout = httpx2.Timeout(settings.request_timeout, read=settings.stale_seconds)
        loop = asyncio.get_running_loop()
        async with self.http.stream("GET", self.path, params=params, timeout=timeout) as response:
            if response.is_error:
                raise await _failure(response)
            lines = response.aiter_lines()
            deadline = loop.time() + settings.stale_seconds
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        line = await anext(lines)
                except StopAsyncIteration:
                    return
                except (TimeoutError, httpx2.ReadTimeout):
                    raise WatchStale(f"nothing for {settings.stale_seconds:g}s") from None
                if not line.strip():
                    continue  # a keep-alive newline is not a sign of a live watch
                await self._on_event(json.loads(line))
                deadline = loop.time() + settings.stale_seconds

    async def _on_event(self, event: Obj) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            code, message = obj.get("code"), obj.get("message", "")
            if code == 410:
                raise WatchGone(message)
            raise WatchFailed(f"watch error {code} {obj.get('reason', '')}: {message}")
        self._watch_events += 1
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            await self._apply(kind, obj)
        elif kind != "BOOKMARK":
            log.warning("ignoring a watch event of type %r", kind)
            return
        if version:
            self.resource_version = version

    # -- the loop --

    async def run(self) -> None:
        """List and watch until cancelled; re-list after 410 Gone, staleness and errors."""
        listed = False
        while True:
            try:
                if not listed:
                    await self._list()
                    listed = True
                    self.synced.set()
                started = asyncio.get_running_loop().time()
                await self._watch()
                # The server ended the watch: resume from the version, at once unless it ends
                # every watch as soon as it starts (a misbehaving proxy: back off instead).
                quick = asyncio.get_running_loop().time() - started < QUICK_WATCH_SECONDS
                if quick and not self._watch_events:
                    delay = self._backoff.next()
                else:
                    self._backoff.reset()
                    continue
            except Exception as exc:  # not CancelledError (a BaseException): that ends the loop
                listed = False
                delay = self._delay(exc)
            if delay:
                await asyncio.sleep(delay)

    def _delay(self, exc: Exception) -> float:
        """How long to wait before re-listing after ``exc`` (logged)."""
        if self._watch_events:
            self._backoff.reset()  # that watch worked for a while: start the back-off anew
            self._watch_events = 0
        first = self._backoff.failures == 0
        delay = self._backoff.next()
        if isinstance(exc, WatchGone | WatchStale) and first:
            delay = 0.0  # expected now and then: re-list at once, back off if it repeats
        log.log(
            logging.INFO if isinstance(exc, WatchGone) else logging.WARNING,
            "watch of %ss ended (%s: %s); re-listing in %.1fs",
            self.kind,
            type(exc).__name__,
            exc,
            delay,
        )
        return delay

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds after some change (bound it with asyncio.timeout)."""
        async with self.changed:
            await self.changed.wait_for(predicate)
