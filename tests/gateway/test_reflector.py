"""The gateway's list+watch reflector against a scripted API server on a real socket.

Each watch request takes the next script from ``FakeApi.watches``: events to stream, then the
end of the stream, a hang (the half-open connection: headers sent, then silence), or an HTTP
error. Lists answer the fake's current objects at its current resourceVersion.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp.web
import httpx2
import pytest
from tutor_gateway.kube.reflector import Reflector, WatchSettings
from tutor_gateway.kube.resources import TutorSession
from tutor_gateway.retry import Backoff, jittered

from tests.support.paths import rest_path

NAMESPACE = "tutors"
PATH = rest_path("tutorsessions", NAMESPACE)
HANG = "hang"  # a watch script: answer 200, then send nothing and never close


def obj(name: str, rv: int, phase: str = "Pending") -> dict[str, Any]:
    return {
        "apiVersion": "tutor.vts.dev/v1alpha1",
        "kind": "TutorSession",
        "metadata": {"name": name, "namespace": NAMESPACE, "resourceVersion": str(rv)},
        "spec": {"tutorId": 1, "studentId": 1, "tokenHash": "a" * 64, "timeoutSeconds": 60},
        "status": {"phase": phase},
    }


def event(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": body}


def bookmark(rv: int) -> dict[str, Any]:
    return event("BOOKMARK", {"kind": "TutorSession", "metadata": {"resourceVersion": str(rv)}})


GONE = event("ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"})


class FakeApi:
    """A namespace of TutorSessions whose watches follow scripts."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.rv = 10
        self.list_failures: collections.deque[int] = collections.deque()  # statuses to answer
        self.watches: collections.deque[Any] = collections.deque()
        self.default_watch: Any = HANG  # the script once ``watches`` is used up
        self.requests: list[dict[str, str]] = []  # query of every request, in order
        self.watch_started = asyncio.Event()
        self._released = asyncio.Event()

    def put(self, *objs: dict[str, Any]) -> None:
        for o in objs:
            self.items[o["metadata"]["name"]] = o
            self.rv = max(self.rv, int(o["metadata"]["resourceVersion"]))

    def remove(self, name: str, rv: int) -> None:
        del self.items[name]
        self.rv = rv

    def lists(self) -> list[dict[str, str]]:
        return [q for q in self.requests if q.get("watch") != "true"]

    def watch_requests(self) -> list[dict[str, str]]:
        return [q for q in self.requests if q.get("watch") == "true"]

    async def handle(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        assert request.path == PATH
        query = dict(request.query)
        self.requests.append(query)
        if query.get("watch") != "true":
            if self.list_failures:
                code = self.list_failures.popleft()
                status = {"kind": "Status", "code": code, "message": "injected"}
                return aiohttp.web.json_response(status, status=code)
            body = {
                "kind": "TutorSessionList",
                "metadata": {"resourceVersion": str(self.rv)},
                "items": list(self.items.values()),
            }
            return aiohttp.web.json_response(body)
        script = self.watches.popleft() if self.watches else self.default_watch
        if isinstance(script, int):
            status = {"kind": "Status", "code": script, "message": "injected"}
            return aiohttp.web.json_response(status, status=script)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        self.watch_started.set()
        released = self._released
        if script == HANG:
            await released.wait()
            return response
        for item in script:
            line = b"\n" if item is None else json.dumps(item).encode() + b"\n"
            await response.write(line)
            if item is None:  # keep-alive newlines, then silence
                await asyncio.sleep(0.05)
        if script and script[-1] is None:
            await released.wait()
        await response.write_eof()
        return response

    def release(self) -> None:
        """End the watches hanging now (later ones hang until the next release)."""
        self._released.set()
        self._released = asyncio.Event()


@contextlib.asynccontextmanager
async def serving(api: FakeApi) -> AsyncIterator[str]:
    server = aiohttp.web.Server(api.handle)
    runner = aiohttp.web.ServerRunner(server, shutdown_timeout=0.5)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        api.release()
        await runner.cleanup()


FAST = WatchSettings(
    request_timeout=2, watch_timeout=30, stale_seconds=30, retry_initial=0.05, retry_max=0.2
)


@contextlib.asynccontextmanager
async def reflecting(
    api: FakeApi, settings: WatchSettings = FAST
) -> AsyncIterator[tuple[Reflector, list[tuple[str, str, bool]]]]:
    """A running reflector on ``api``, and what its listener heard: (event, name, cached)."""
    heard: list[tuple[str, str, bool]] = []
    async with serving(api) as url, httpx2.AsyncClient(base_url=url) as http:
        reflector = Reflector(http, TutorSession, NAMESPACE, settings)

        async def listener(kind: str, o: dict[str, Any]) -> None:
            name = o["metadata"]["name"]
            heard.append((kind, name, name in reflector.objects))

        reflector.add_listener(listener)
        task = asyncio.create_task(reflector.run())
        try:
            async with asyncio.timeout(5):
                await reflector.synced.wait()
            yield reflector, heard
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def until(check: Callable[[], Any], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


async def test_watches_from_the_lists_version_with_bookmarks_and_resumes_without_a_relist():
    api = FakeApi()
    api.put(obj("a", 5), obj("b", 10))
    api.watches.append([event("ADDED", obj("c", 11)), bookmark(15)])  # then the server ends it
    async with reflecting(api) as (reflector, heard):
        await until(lambda: len(api.watch_requests()) == 2, "the resumed watch")
        assert set(reflector.objects) == {"a", "b", "c"}
        first, second = api.watch_requests()
        assert first["resourceVersion"] == "10"  # the list's version
        assert first["allowWatchBookmarks"] == "true"
        assert first["timeoutSeconds"] == "30"
        assert second["resourceVersion"] == "15"  # the bookmark advanced it
        assert len(api.lists()) == 1  # a watch the server ended is resumed, not re-listed
        assert reflector.resource_version == "15"
    assert ("ADDED", "c", True) in heard


@pytest.mark.parametrize("gone", [[GONE], 410], ids=["error-event", "http-410"])
async def test_410_gone_relists_and_drops_what_was_deleted_meanwhile(gone: Any) -> None:
    api = FakeApi()
    api.put(obj("a", 5), obj("b", 10))
    api.watches.append(HANG)
    async with reflecting(api) as (reflector, heard):
        await api.watch_started.wait()
        # While the watch is down, "b" goes and "a" changes; the history is compacted.
        api.remove("b", 20)
        api.put(obj("a", 21, phase="Active"))
        api.release()  # the hanging watch ends; the resume gets 410
        api.watches.clear()
        api.watches.append(gone)
        await until(lambda: "b" not in reflector.objects, "the deleted object to disappear")
        assert set(reflector.objects) == {"a"}
        assert reflector.objects["a"]["status"]["phase"] == "Active"
        await until(lambda: len(api.watch_requests()) == 3, "a watch after the re-list")
        hung, resumed, after = api.watch_requests()
        assert hung["resourceVersion"] == resumed["resourceVersion"] == "10"
        assert after["resourceVersion"] == "21"  # from the re-list
        assert len(api.lists()) == 2 and reflector.lists == 2
    # The listener heard the deletion while the object was still cached (as for a watch).
    assert ("DELETED", "b", True) in heard
    assert ("MODIFIED", "a", True) in heard


@pytest.mark.parametrize("keepalive", [False, True], ids=["silent", "keep-alive-newlines"])
async def test_a_watch_that_delivers_nothing_is_stale_and_relisted(keepalive: bool) -> None:
    api = FakeApi()
    api.put(obj("a", 5), obj("b", 10))
    api.watches.append([None, None, None] if keepalive else HANG)
    settings = WatchSettings(
        request_timeout=2, watch_timeout=30, stale_seconds=0.5, retry_initial=5, retry_max=5
    )
    async with reflecting(api, settings) as (reflector, heard):
        await api.watch_started.wait()
        started = time.monotonic()
        api.remove("b", 20)  # the half-open watch will never tell
        await until(lambda: "b" not in reflector.objects, "the stale watch to be re-listed")
        # Re-listed at once (no back-off for the first stale watch), after ~stale_seconds.
        assert 0.4 < time.monotonic() - started < 3
        assert len(api.lists()) == 2
    assert ("DELETED", "b", True) in heard


async def test_watches_the_server_ends_at_once_are_resumed_with_back_off() -> None:
    api = FakeApi()
    api.put(obj("a", 5))
    api.default_watch = []  # every watch ends as soon as it starts, with nothing on it
    async with reflecting(api) as (reflector, _):
        await asyncio.sleep(1.0)
        # Back-off of 0.05 s doubling to 0.2 s (jittered): a handful, not a busy loop.
        assert 3 <= len(api.watch_requests()) <= 15
        assert len(api.lists()) == reflector.lists == 1  # the cache is fine: no re-list
        assert {q["resourceVersion"] for q in api.watch_requests()} == {"10"}


async def test_errors_back_off_and_relist() -> None:
    api = FakeApi()
    api.put(obj("a", 5))
    api.watches.extend([500, 503])  # two failed watches, then one that hangs
    async with reflecting(api) as (reflector, _):
        api.list_failures.extend([500])  # the first re-list fails too
        await until(lambda: len(api.watch_requests()) == 3, "the watch after the errors")
        # list, watch 500, list 500, list, watch 503, list, watch
        assert [q.get("watch") == "true" for q in api.requests] == [
            False,
            True,
            False,
            False,
            True,
            False,
            True,
        ]
        assert set(reflector.objects) == {"a"}


async def test_an_error_before_the_first_list_is_retried() -> None:
    api = FakeApi()
    api.put(obj("a", 5))
    api.list_failures.extend([500, 403])
    async with reflecting(api) as (reflector, _):
        assert set(reflector.objects) == {"a"}
        assert len(api.lists()) == 3


def test_backoff_doubles_with_jitter_up_to_the_maximum_and_resets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: low)  # the jitter's lowest draw
    low = Backoff(jittered(0.5, 4))
    assert [low.next() for _ in range(6)] == [0.25, 0.5, 1, 2, 2, 2]
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # its highest
    high = Backoff(jittered(0.5, 4))
    assert [high.next() for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    high.reset()
    assert high.failures == 0 and high.next() == 0.5 and high.failures == 1
