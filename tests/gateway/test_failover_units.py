"""Failover in pieces: the in-flight bookkeeping and the endpoint choice as pure logic, then the
relay itself against fake engines (real WebSocket servers on 127.0.0.1) that speak the
receipts contract of ``tutor_contract.relay``, or, like an older engine, send none."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState
from tutor_contract.crd import ACTIVE, ENGINE_KEY_HEADER, PENDING, READY_ENDPOINTS
from tutor_contract.relay import (
    RELAY_HEADER,
    RELAY_HELLO_HEADER,
    Receipt,
    receipt_frame,
    resume_params,
)
from tutor_gateway.config import GatewaySettings
from tutor_gateway.engines import EngineEndpoint
from tutor_gateway.inbox import MAX_UNRECEIPTED_FRAMES, FrameInbox, Loss, SentFrames
from tutor_gateway.kube.reflector import Reflector
from tutor_gateway.kube.resources import TutorEngine, TutorSession, engine_name, ready_endpoints
from tutor_gateway.kube.router import KubeEngineRouter, choose_endpoint, release_candidates
from tutor_gateway.metrics import GatewayMetrics
from tutor_gateway.relay import (
    REPLY_CUT,
    REPLY_MAYBE_CUT,
    Relay,
    RelayLimits,
    connection_served,
    loss_notice,
)
from tutor_gateway.server import uvicorn_options
from tutor_gateway.sessions import Session
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

from tests.servers import serve_in_loop

pytestmark = pytest.mark.timeout(60)


def started(seq: int, stream: bool = False) -> Receipt:
    return Receipt(seq, True, stream)


def done(seq: int, stream: bool = False) -> Receipt:
    return Receipt(seq, False, stream)


def sent(frames: SentFrames, *payloads: bytes) -> None:
    for payload in payloads:
        frames.add(payload, True)


# -- the bookkeeping of frames sent to one engine connection --


def test_frames_never_started_are_replayed_and_the_started_one_is_in_flight() -> None:
    frames = SentFrames()
    sent(frames, b"one", b"two", b"three", b"four")
    for receipt in (started(1), done(1), started(2)):
        frames.apply(receipt)
    assert frames.bytes == len(b"twothreefour")
    assert frames.lost() == Loss(
        replay=[(b"three", True), (b"four", True)], in_flight=True, receipted=True
    )


def test_a_settled_connection_loses_nothing() -> None:
    frames = SentFrames()
    sent(frames, b"one", b"two")
    for receipt in (started(1), done(1), done(2)):  # two: an option, or rejected
        frames.apply(receipt)
    assert frames.bytes == 0
    assert frames.lost() == Loss(receipted=True)


def test_a_streaming_turn_in_flight_ends_interrupted() -> None:
    frames = SentFrames()
    sent(frames, b"options", b"question")
    frames.apply(done(1, stream=True))
    frames.apply(started(2, stream=True))
    assert frames.latest == started(2, stream=True)
    assert frames.lost() == Loss(in_flight=True, streaming=True, receipted=True)


def test_an_unstarted_frame_older_than_a_started_one_was_superseded() -> None:
    frames = SentFrames()
    sent(frames, b"replaced", b"newer")
    frames.apply(started(2, stream=True))  # barge-in: the receipt settling 1 was lost
    assert frames.lost().replay == []


def test_receipts_for_frames_never_sent_change_only_the_mode() -> None:
    frames = SentFrames()
    sent(frames, b"one")
    frames.apply(done(7, stream=True))
    frames.apply(started(9))
    assert frames.latest == started(9) and len(frames) == 1 and frames.bytes == 3


def test_without_receipts_every_frame_sent_may_be_in_flight_and_none_is_replayed() -> None:
    frames = SentFrames()
    assert frames.lost() == Loss()
    sent(frames, b"one", b"two")
    assert frames.lost() == Loss(in_flight=True)


def test_frames_are_forgotten_only_while_no_receipt_came() -> None:
    frames = SentFrames()
    sent(frames, b"one", b"two")
    assert frames.forget_oldest() and frames.bytes == 3
    frames.apply(started(2))
    assert not frames.forget_oldest(), "a receipting engine's frames are kept for replay"
    assert frames.lost().in_flight  # frame 1 was forgotten and never settled
    settled = SentFrames()
    sent(settled, b"one", b"two")
    settled.forget_oldest()
    settled.apply(done(1))
    settled.apply(done(2))
    assert settled.lost() == Loss(receipted=True)


def test_an_engine_without_receipts_holds_a_bounded_number_of_frames() -> None:
    frames = SentFrames()
    sent(frames, *[b""] * (MAX_UNRECEIPTED_FRAMES + 10))
    assert len(frames) == MAX_UNRECEIPTED_FRAMES


# -- the inbox: queued and unsettled frames under one byte bound --


async def test_unsettled_frames_count_against_the_bound_until_their_receipt() -> None:
    inbox = FrameInbox(max_bytes=10)
    await inbox.put(b"123456", True)
    assert await inbox.get() == (b"123456", True)
    await inbox.settle(started(1))  # a receipting engine: frame 1 is held for replay
    blocked = asyncio.create_task(inbox.put(b"12345", False))
    await asyncio.sleep(0.05)
    assert not blocked.done() and inbox.queued_bytes == 6
    await inbox.settle(done(1))
    await asyncio.wait_for(blocked, 5)
    assert inbox.queued_bytes == 5


async def test_a_lost_engine_gives_its_unstarted_frames_back_first() -> None:
    inbox = FrameInbox(max_bytes=100)
    for payload in (b"one", b"two", b"three"):
        await inbox.put(payload, True)
    for _ in range(3):
        await inbox.get()
    await inbox.settle(started(1, stream=True))
    await inbox.put(b"four", False)  # arrived while the engine was being lost
    loss = await inbox.lost()
    assert loss.in_flight and loss.streaming
    assert inbox.latest == Receipt(1, True, True, reply=1), "the cut reply keeps its id"
    assert [await inbox.get() for _ in range(3)] == [
        (b"two", True),
        (b"three", True),
        (b"four", False),
    ]
    assert inbox.sent.lost() == Loss(in_flight=True), "the next connection counts from 1"


async def test_a_settled_loss_resumes_exactly_where_the_connection_left_off() -> None:
    inbox = FrameInbox(max_bytes=100)
    await inbox.put(b"question", True)
    await inbox.get()
    await inbox.settle(Receipt(1, False, False, pcm16=24000, reply=4))
    await inbox.lost()
    assert inbox.latest is not None
    assert resume_params(inbox.latest) == {
        "stream": "0",
        "reply_base": "4",
        "audio_format": "pcm16",
        "sample_rate": "24000",
    }
    await inbox.put(b"next", True)
    await inbox.get()  # the next connection dies before its first receipt
    await inbox.lost()
    assert inbox.latest == Receipt(1, False, False, pcm16=24000, reply=5), (
        "a frame that may have started a reply on it skips that reply's id"
    )


async def test_an_engine_connection_may_be_given_up_only_when_nothing_would_be_lost() -> None:
    inbox = FrameInbox(max_bytes=100)
    assert inbox.releasable, "nothing sent on it: it is as it was opened"
    await inbox.put(b"question", True)
    assert not inbox.releasable, "a frame waits for it"
    await inbox.get()
    assert not inbox.releasable, "sent, not settled"
    await inbox.settle(started(1))
    assert not inbox.releasable, "its reply is under way"
    await inbox.settle(done(1))
    assert inbox.releasable
    await inbox.settle(Receipt(2, False, False, held=True))
    assert not inbox.releasable, "an audio stream is open"
    unreceipted = FrameInbox(max_bytes=100)
    await unreceipted.put(b"question", True)
    await unreceipted.get()
    assert not unreceipted.releasable, "an engine without receipts: its state is not known"


# -- what the client is told, and when a failover gets a fresh budget --


def test_loss_notices() -> None:
    assert loss_notice(Loss()) is None
    assert loss_notice(Loss(receipted=True)) is None
    seed = loss_notice(Loss(in_flight=True, receipted=True))
    assert seed is not None and set(seed) == {"type", "content", "timestamp"}
    assert (seed["type"], seed["content"]) == ("error", REPLY_CUT)
    maybe = loss_notice(Loss(in_flight=True))
    assert maybe is not None and maybe["content"] == REPLY_MAYBE_CUT
    cut = loss_notice(Loss(in_flight=True, streaming=True, receipted=True))
    assert cut is not None and cut["type"] == "interrupted"
    assert set(cut) == {"type", "role", "reason", "timestamp"}


@pytest.mark.parametrize(
    ("heard", "lasted", "served"),
    [(True, 0.0, True), (False, 120.0, True), (False, 119.0, False)],
)
def test_a_connection_served_if_the_engine_spoke_or_it_lasted_the_budget(
    heard, lasted, served
) -> None:
    assert connection_served(heard, lasted, budget=120.0) is served


# -- the cluster router's choice --

A, B, C = "http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"


@pytest.mark.parametrize(
    ("pinned", "ready", "failed", "chosen"),
    [
        (A, [A, B], set(), A),  # pinned and fine
        (None, [A, B], set(), None),  # placement is the operator's until a failure
        (A, [A, B], {A}, B),  # the pinned pod failed: another ready one at once
        (None, [A, B], {A}, B),  # unpinned after its pod went: the same
        (A, [A], {A}, A),  # no other: the pinned one again (it may come back)
        (None, [A], {A}, None),  # nothing to try: wait for the operator
        (C, [A, B], {A}, C),  # re-pinned elsewhere: follow the operator
        (A, [A, B, C], {A, B}, C),
    ],
)
def test_choose_endpoint(pinned, ready, failed, chosen) -> None:
    assert choose_endpoint(pinned, ready, failed, "session-1") == chosen


@pytest.mark.parametrize(
    ("pinned", "ready", "asked"),
    [
        (A, [A, B], [A, B]),  # the pinned pod first, then any other: the store is shared
        (B, [A, B], [B, A]),
        (C, [A, B], [C, A, B]),  # a pinned pod not (or no longer) listed is still tried
        (None, [A, B], [A, B]),  # a Pending session: any ready pod of its tutor
        (None, [], []),  # none yet: tried again until a pod is ready
    ],
)
def test_a_deleted_session_is_released_by_any_engine_of_its_tutor(pinned, ready, asked) -> None:
    assert release_candidates(pinned, ready) == asked


def test_the_choice_among_others_is_stable_per_session_and_spread() -> None:
    ready = [A, B, C, "http://10.0.0.4:8000"]
    picks = {sid: choose_endpoint(A, ready, {A}, sid) for sid in (f"s{i}" for i in range(40))}
    assert all(choose_endpoint(A, ready, {A}, sid) == pick for sid, pick in picks.items())
    assert set(picks.values()) == set(ready) - {A}


def test_ready_endpoints_of_a_tutor_engine() -> None:
    assert engine_name(12) == "tutor-12"
    assert ready_endpoints(None) == []
    assert ready_endpoints({"status": {}}) == []
    assert ready_endpoints({"status": {READY_ENDPOINTS: [A, "", 7, B]}}) == [A, B]


async def test_the_router_moves_a_failed_session_to_another_ready_pod_at_once() -> None:
    sessions = Reflector(None, TutorSession, "ns")  # caches filled by hand, never run
    engines = Reflector(None, TutorEngine, "ns")
    sessions.synced.set()
    router = KubeEngineRouter(sessions, engines, "key", None)  # type: ignore[arg-type]
    session = Session("s-1", 7, 1, None, "hash", "active", 0.0, 0.0)
    sessions.objects["s-1"] = {"status": {"phase": ACTIVE, "endpoint": A}}
    engines.objects[engine_name(7)] = {"status": {READY_ENDPOINTS: [A, B]}}
    assert (await router.endpoint(session)).base_url == A
    router.report_failure(session, EngineEndpoint(A, "key"))
    assert (await router.endpoint(session)).base_url == B, "not waiting for a re-pin"
    sessions.objects["s-1"] = {"status": {"phase": PENDING}}  # the operator un-pinned it
    assert (await router.endpoint(session)).base_url == B
    other = Session("s-2", 7, 1, None, "hash", "active", 0.0, 0.0)
    sessions.objects["s-2"] = {"status": {"phase": ACTIVE, "endpoint": A}}
    assert (await router.endpoint(other)).base_url == A, "failures are per session"


# -- the relay against fake engines --

SESSION = Session("s-failover", 1, 1, None, "hash", "active", 0.0, 0.0)
KEY = "engine-key"


def text(content: str) -> str:
    return json.dumps({"type": "text", "content": content})


class FakeEngine:
    """An engine on 127.0.0.1: answers ``text`` with ``echo: <content>`` (streaming: a delta
    and a final ``text``), applies ``options``, opens an audio stream on ``audio_start``, and
    starts but never finishes ``hang``. With ``receipts`` it numbers each connection's frames
    and sends ``started``/``done`` (and ``done 0`` at once when asked). ``ended`` holds each
    finished connection's close code. With ``drain_on_frame`` it closes 1012 as soon as a frame
    arrives, before any receipt for it (an engine whose drain began just then)."""

    def __init__(self, receipts: bool = True, drain_on_frame: bool = False) -> None:
        self.receipts = receipts
        self.drain_on_frame = drain_on_frame
        self.received: list[str] = []  # every frame it got, over all connections
        self.requests: list[tuple[str, Headers]] = []  # (path, headers) per connection
        self.connections: list[ServerConnection] = []
        self.ended: list[int | None] = []
        self.hanging = asyncio.Event()
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeEngine]:
        async with serve(self._serve, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            self.endpoint = EngineEndpoint(f"http://127.0.0.1:{port}", KEY)
            yield self

    async def wait_ended(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.ended) >= count)

    async def wait_received(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.received) >= count)

    async def kill(self, code: int | None = None) -> None:
        """Drop every connection (no close frame), or close them with ``code``."""
        for connection in self.connections:
            if code is None:
                connection.transport.abort()
            else:
                await connection.close(code)

    async def _serve(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.connections.append(ws)
        self.requests.append((ws.request.path, ws.request.headers))
        query = parse_qs(urlsplit(ws.request.path).query)
        stream = query.get("stream") == ["1"]
        queue: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
        if self.receipts and ws.request.headers.get(RELAY_HELLO_HEADER) == "1":
            await ws.send(receipt_frame(0, started=False, stream=stream))
        worker = asyncio.create_task(self._work(ws, queue, stream))
        try:
            seq = 0
            async for frame in ws:
                seq += 1
                async with self._changed:
                    self.received.append(str(frame))
                    self._changed.notify_all()
                if self.drain_on_frame:
                    await ws.close(1012)
                    break
                queue.put_nowait((seq, json.loads(frame)))
        except ConnectionClosed:
            pass
        finally:
            worker.cancel()
            async with self._changed:
                self.ended.append(ws.close_code)
                self._changed.notify_all()

    async def _work(
        self, ws: ServerConnection, queue: asyncio.Queue[tuple[int, dict[str, Any]]], stream: bool
    ) -> None:
        held = False

        async def receipt(seq: int, begun: bool) -> None:
            if self.receipts:
                await ws.send(receipt_frame(seq, started=begun, stream=stream, held=held))

        while True:
            seq, message = await queue.get()
            if message["type"] == "options":
                stream = message["stream"]
                await ws.send(json.dumps({"type": "options", "stream": stream}))
                await receipt(seq, False)
                continue
            if message["type"] == "audio_start":
                held = True
                await receipt(seq, False)
                continue
            await receipt(seq, True)
            content = message["content"]
            if stream:
                await ws.send(json.dumps({"type": "text_delta", "reply_id": 1, "content": "…"}))
            if content == "hang":
                self.hanging.set()
                await ws.wait_closed()
                return
            reply: dict[str, Any] = {"type": "text", "content": f"echo: {content}"}
            await ws.send(json.dumps({**reply, "final": True} if stream else reply))
            await receipt(seq, False)


class ListRouter:
    """Engines in turn: the first until it fails, then the next; past the last, none ever."""

    def __init__(self, *engines: FakeEngine) -> None:
        self.endpoints = [e.endpoint for e in engines]

    async def endpoint(self, session: Session) -> EngineEndpoint:
        if not self.endpoints:
            await asyncio.Event().wait()  # the relay's deadline ends this
        return self.endpoints[0]

    async def release(self, session: Session) -> None:
        return None

    def report_failure(self, session: Session, endpoint: EngineEndpoint) -> None:
        if self.endpoints and self.endpoints[0] == endpoint:
            self.endpoints.pop(0)


async def _nothing() -> None:
    return None


@contextlib.asynccontextmanager
async def relay_to(
    router: ListRouter, wait_seconds: float = 30.0, release_seconds: float = 0.0
) -> AsyncIterator[Any]:
    """A gateway-like server relaying ``/ws`` to the router's engines; yields (url, metrics)."""
    metrics = GatewayMetrics()
    limits = RelayLimits(
        max_message_bytes=2**20,
        max_queued_bytes=2**20,
        engine_wait_seconds=wait_seconds,
        engine_connect_timeout_seconds=10,
        send_timeout_seconds=30,
        activity_interval_seconds=1,
        engine_release_seconds=release_seconds,
    )
    app = FastAPI()

    @app.websocket("/ws")
    async def conversation(websocket: WebSocket) -> None:
        await websocket.accept()
        await Relay(websocket, SESSION, router, limits, _nothing, metrics=metrics).run()

    options = uvicorn_options(GatewaySettings(_env_file=None))  # type: ignore[call-arg]
    async with serve_in_loop(app, **options) as server:
        yield f"{server.ws}/ws", metrics


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(30):
        return json.loads(await ws.recv())


def failovers(metrics: GatewayMetrics, outcome: str) -> float:
    return metrics.failovers.labels(outcome)._value.get()


def waits(metrics: GatewayMetrics, outcome: str) -> float:
    """Waits for an engine observed with ``outcome`` (tutor_gateway_engine_wait_seconds)."""
    name = "tutor_gateway_engine_wait_seconds_count"
    return metrics.registry.get_sample_value(name, {"outcome": outcome}) or 0.0


async def test_a_lost_engine_cuts_the_reply_in_flight_and_replays_what_never_started() -> None:
    first, second = FakeEngine(), FakeEngine()
    async with first.running(), second.running():
        router = ListRouter(first, second)
        async with relay_to(router) as (url, metrics), connect(url) as client:
            await client.send(text("one"))
            assert await recv(client) == {"type": "text", "content": "echo: one"}
            for content in ("hang", "two", "three"):
                await client.send(text(content))
            await first.hanging.wait()
            await first.wait_received(4)  # two and three wait in the engine, never started
            await first.kill()
            cut = await recv(client)
            assert (cut["type"], cut["content"]) == ("error", REPLY_CUT)
            assert await recv(client) == {"type": "text", "content": "echo: two"}
            assert await recv(client) == {"type": "text", "content": "echo: three"}
            await client.send(text("four"))
            assert await recv(client) == {"type": "text", "content": "echo: four"}
        assert second.received == [text("two"), text("three"), text("four")]
        path, headers = second.requests[0]
        assert parse_qs(urlsplit(path).query)["stream"] == ["0"]
        assert headers[RELAY_HEADER] == "1" and headers[ENGINE_KEY_HEADER] == KEY
        assert failovers(metrics, "resumed") == 1
        assert waits(metrics, "ready") == 2  # at the start, and the failover's


async def test_a_frame_an_engine_drained_before_receipting_goes_to_the_next_engine() -> None:
    """Receipt 0 (the hello) says the engine receipts frames: one it never saw started, on a
    connection that ended before its first receipt, was never started and is sent again."""
    draining, second = FakeEngine(drain_on_frame=True), FakeEngine()
    async with draining.running(), second.running():
        async with relay_to(ListRouter(draining, second)) as (url, metrics), connect(url) as client:
            await client.send(text("one"))
            assert await recv(client) == {"type": "text", "content": "echo: one"}, "no error"
        assert draining.received == second.received == [text("one")]
        assert failovers(metrics, "resumed") == 1


async def test_a_streaming_reply_in_flight_ends_interrupted_and_streaming_goes_on() -> None:
    first, second = FakeEngine(), FakeEngine()
    async with first.running(), second.running():
        async with relay_to(ListRouter(first, second)) as (url, _), connect(url) as client:
            await client.send(json.dumps({"type": "options", "stream": True}))
            assert (await recv(client))["type"] == "options"
            await client.send(text("hang"))
            assert (await recv(client))["type"] == "text_delta"
            await first.kill(1012)  # a draining engine's close
            cut = await recv(client)
            assert cut["type"] == "interrupted" and "restarted" in cut["reason"]
            await client.send(text("again"))
            assert (await recv(client))["type"] == "text_delta"
            final = await recv(client)
            assert final == {"type": "text", "content": "echo: again", "final": True}
        assert parse_qs(urlsplit(second.requests[0][0]).query)["stream"] == ["1"]


async def test_an_engine_without_receipts_gets_one_error_and_nothing_replayed() -> None:
    first, second = FakeEngine(receipts=False), FakeEngine(receipts=False)
    async with first.running(), second.running():
        async with relay_to(ListRouter(first, second)) as (url, _), connect(url) as client:
            await client.send(text("hang"))
            await client.send(text("queued"))
            await first.hanging.wait()
            await first.wait_received(2)
            await first.kill()
            cut = await recv(client)
            assert (cut["type"], cut["content"]) == ("error", REPLY_MAYBE_CUT)
            await client.send(text("after"))
            assert await recv(client) == {"type": "text", "content": "echo: after"}
        assert second.received == [text("after")], "what the old engine had is not sent twice"


async def test_other_engine_close_codes_pass_through() -> None:
    first, second = FakeEngine(), FakeEngine()
    async with first.running(), second.running():
        async with relay_to(ListRouter(first, second)) as (url, metrics), connect(url) as client:
            await client.send(text("one"))
            await recv(client)
            await first.kill(4000)
            with pytest.raises(ConnectionClosed) as closed:
                await recv(client)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
        assert second.requests == [] and failovers(metrics, "resumed") == 0


async def test_no_engine_within_the_budget_after_a_loss_closes_4503() -> None:
    only = FakeEngine()
    async with only.running():
        async with relay_to(ListRouter(only), wait_seconds=1) as (url, metrics):
            async with connect(url) as client:
                await client.send(text("hang"))
                await only.hanging.wait()
                await only.kill()
                assert (await recv(client))["content"] == REPLY_CUT
                unavailable = await recv(client)
                assert unavailable["type"] == "error" and "unavailable" in unavailable["content"]
                with pytest.raises(ConnectionClosed) as closed:
                    await recv(client)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4503
        assert failovers(metrics, "unavailable") == 1
        assert (waits(metrics, "ready"), waits(metrics, "timeout")) == (1, 1)


async def test_an_engine_that_drops_every_connection_still_ends_in_4503() -> None:
    class Dropper(FakeEngine):
        async def _serve(self, ws: ServerConnection) -> None:
            assert ws.request is not None
            self.requests.append((ws.request.path, ws.request.headers))
            await ws.close(1011)

    dropper = Dropper()
    async with dropper.running():
        router = ListRouter(dropper)
        router.report_failure = lambda session, endpoint: None  # type: ignore[method-assign]
        async with relay_to(router, wait_seconds=1) as (url, _), connect(url) as client:
            await client.send(text("hello"))  # sent again to each connection, never answered
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    assert (await recv(client))["type"] == "error"
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4503
        assert len(dropper.requests) > 1, "it was tried again, within the one budget"


class GoneClient:
    """A client socket whose peer has gone: its one frame was read, sending to it fails, and
    its reader has not yet seen the disconnect (the race a loaded gateway hits)."""

    client_state = WebSocketState.CONNECTED

    def __init__(self, frame: str) -> None:
        self.query_params: dict[str, str] = {}
        self.scope: dict[str, Any] = {}
        self.frames = [{"type": "websocket.receive", "text": frame}]
        self.sent: list[Any] = []

    async def receive(self) -> dict[str, Any]:
        if self.frames:
            return self.frames.pop(0)
        await asyncio.Event().wait()  # the disconnect is never seen
        raise AssertionError

    async def send_text(self, data: str) -> None:
        raise WebSocketDisconnect(1006)

    send_bytes = send_json = send_text

    async def close(self, code: int, reason: str) -> None:
        self.sent.append(("close", code))


async def test_a_client_gone_while_its_reply_is_sent_ends_the_relay_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tutor_gateway.relay")
    engine = FakeEngine()
    limits = RelayLimits(2**20, 2**20, 30, 10, 30, 1)
    client = GoneClient(text("one"))
    async with engine.running():
        relay = Relay(client, SESSION, ListRouter(engine), limits, _nothing)  # type: ignore[arg-type]
        async with asyncio.timeout(30):
            await relay.run()
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    assert "client left" in caplog.text and client.sent == []
