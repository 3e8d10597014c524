"""Traces through the relay: a ``gateway.turn`` span per client frame forwarded, announced to
the engine by a trace frame just before it, ended by the frame's ``done`` receipt; the engine's
``engine.turn`` is its child. With tracing off nothing changes: no trace frame at all.

The gateway runs in this process (``gateway_factory``) and is pointed at an engine that runs
here too (a real one, or a fake that records what reaches it), so both record their spans to
one in-memory exporter (``tests.support.tracing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from tutor_contract.relay import parse_receipt, parse_trace_frame, receipt_frame
from tutor_gateway.engines import EngineEndpoint
from tutor_gateway.sessions import Session
from websockets.asyncio.server import ServerConnection, serve
from websockets.sync.client import ClientConnection

from tests.conftest import GatewayFactory
from tests.engine.conftest import engine as engine_app
from tests.engine.conftest import serve as serve_engine
from tests.gateway.helpers import create_session, open_ws
from tests.servers import RunningServer
from tests.support.metrics import scrape
from tests.support.tracing import recorded_spans
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

ENGINE_KEY = "tracing-test-key"


class FixedRouter:
    """Every session's engine is the one at ``base_url``."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def endpoint(self, session: Session) -> EngineEndpoint:
        return EngineEndpoint(self.base_url, ENGINE_KEY)

    async def release(self, session: Session) -> None:
        return None

    def report_failure(self, session: Session, endpoint: EngineEndpoint) -> None:
        return None


def routed_to(gateway_factory: GatewayFactory, base_url: str) -> RunningServer:
    """A local-mode gateway whose sessions all go to the engine at ``base_url``."""
    gateway = gateway_factory()
    gateway.app.state.gateway.router = FixedRouter(base_url)
    return gateway


class RecordingEngine:
    """A fake engine on 127.0.0.1 that records every frame it gets and, per client frame
    (trace frames are not numbered), sends the receipts, one text reply between them."""

    def __init__(self) -> None:
        self.frames: list[str | bytes] = []
        self.port = 0

    async def _handle(self, ws: ServerConnection) -> None:
        seq = 0
        async for frame in ws:
            self.frames.append(frame)
            if parse_trace_frame(frame) is not None:
                continue
            seq += 1
            await ws.send(receipt_frame(seq, started=True, stream=False))
            await ws.send(json.dumps({"type": "text", "content": f"reply {seq}"}))
            await ws.send(receipt_frame(seq, started=False, stream=False))

    @contextlib.contextmanager
    def running(self) -> Iterator[str]:
        loop = asyncio.new_event_loop()
        ready, stop = threading.Event(), asyncio.Event()

        async def main() -> None:
            async with serve(self._handle, "127.0.0.1", 0) as server:
                self.port = next(iter(server.sockets)).getsockname()[1]
                ready.set()
                await stop.wait()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        assert ready.wait(30)
        try:
            yield f"http://127.0.0.1:{self.port}"
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(30)


def converse(ws: ClientConnection, messages: list[str]) -> list[dict[str, Any]]:
    replies = []
    for message in messages:
        ws.send(message)
        replies.append(json.loads(ws.recv(timeout=60)))
    return replies


def named(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def test_without_tracing_the_engine_gets_exactly_the_clients_frames(
    gateway_factory: GatewayFactory,
) -> None:
    engine = RecordingEngine()
    with engine.running() as url:
        gateway = routed_to(gateway_factory, url)
        session = create_session(gateway, tutor_id=4)
        messages = [json.dumps({"type": "text", "content": f"m{i}"}) for i in range(3)]
        with open_ws(gateway, session) as ws:
            replies = converse(ws, messages)
    assert [r["content"] for r in replies] == ["reply 1", "reply 2", "reply 3"]
    assert engine.frames == messages  # no trace frame, nothing else


def test_each_forwarded_frame_is_a_gateway_turn_announced_by_a_trace_frame(
    gateway_factory: GatewayFactory,
) -> None:
    engine = RecordingEngine()
    with engine.running() as url, recorded_spans() as exporter:
        gateway = routed_to(gateway_factory, url)
        session = create_session(gateway, tutor_id=4)
        messages = [
            json.dumps({"type": "text", "content": "first"}),
            json.dumps({"type": "options", "stream": False}),
        ]
        with open_ws(gateway, session) as ws:
            replies = converse(ws, messages)
            turns = wait_for(
                lambda: (
                    len(named(exporter.get_finished_spans(), "gateway.turn")) == 2
                    and named(exporter.get_finished_spans(), "gateway.turn")
                ),
                10,
                "both turns ended by their done receipts",
            )
        found = scrape(f"{gateway.http}/metrics")
    assert [r["content"] for r in replies] == ["reply 1", "reply 2"]
    # A trace frame right before each client frame, carrying that frame's span.
    assert len(engine.frames) == 4
    carriers = [parse_trace_frame(f) for f in engine.frames[0::2]]
    assert engine.frames[1::2] == messages
    for carrier, turn in zip(carriers, turns, strict=True):
        assert carrier is not None
        _, trace_id, span_id, _ = carrier["traceparent"].split("-")
        assert int(trace_id, 16) == turn.context.trace_id
        assert int(span_id, 16) == turn.context.span_id
    assert [t.attributes["message.type"] for t in turns] == ["text", "options"]
    for turn in turns:
        assert turn.attributes["tutor.id"] == 4
        assert turn.attributes["session.id"] == session["session_id"][:8]
        assert "relay.settled" not in turn.attributes  # ended by its receipt, not the close
    # Trace frames and receipts are not relayed traffic.
    assert found.value("tutor_gateway_relay_frames_total", direction="client_to_engine") == 2
    assert found.value("tutor_gateway_relay_bytes_total", direction="client_to_engine") == sum(
        len(m) for m in messages
    )
    assert all(parse_receipt(f) is None for f in engine.frames)


def test_the_engines_turn_is_a_child_of_the_gateways(gateway_factory: GatewayFactory) -> None:
    with (
        recorded_spans() as exporter,
        serve_engine(engine_app(api_key=ENGINE_KEY, tutor_id=5)) as engine,
    ):
        gateway = routed_to(gateway_factory, engine.http)
        session = create_session(gateway, tutor_id=5)
        with open_ws(gateway, session) as ws:
            (reply,) = converse(ws, [json.dumps({"type": "text", "content": "trace me"})])
            assert reply["type"] == "text"

            def both() -> tuple[ReadableSpan, ReadableSpan] | None:
                spans = exporter.get_finished_spans()
                gateway_turns, engine_turns = (
                    named(spans, "gateway.turn"),
                    named(spans, "engine.turn"),
                )
                if gateway_turns and engine_turns:
                    return gateway_turns[0], engine_turns[0]
                return None

            outer, inner = wait_for(both, 10, "the gateway's and the engine's turn spans")
    assert inner.parent is not None
    assert inner.context.trace_id == outer.context.trace_id
    assert inner.parent.span_id == outer.context.span_id
    assert outer.attributes["message.type"] == "text"
    assert inner.attributes["session.id"] == outer.attributes["session.id"]
    assert inner.attributes["session.id"] == session["session_id"][:8]
