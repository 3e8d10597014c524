"""Idle sessions give their engine connection up (``ENGINE_IDLE_RELEASE_SECONDS``): the relay
against fake engines on 127.0.0.1, with a release time of a fraction of a second.

What must hold: the client's socket stays open and its next message is answered on a new
engine connection opened where the last left off; a connection with a reply in flight, an
open audio stream, or an engine that sends no receipts (after a frame) is never given up.

The client and the relay share one event loop on a loaded machine: a stall longer than the
release time between two client steps may give a connection up early (legitimately: nothing
was in flight). So the tests count connections where it matters, not assume a stall-free run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from tutor_engine.backends.mock import make_wav
from tutor_gateway.metrics import GatewayMetrics
from websockets.asyncio.client import ClientConnection, connect

from tests.abuse.conftest import (
    GatewayStarter,
    connect_session,
    create_session,
    gateway_process,  # noqa: F401  (the fixture)
    recv_json,
)
from tests.support.metrics import scrape
from tests.support.waiting import wait_for

from .test_failover_units import FakeEngine, ListRouter, recv, relay_to, text

pytestmark = pytest.mark.timeout(60)

RELEASE = 0.2
# Long enough for several release times to pass; the connections checked must still be open.
QUIET = 10 * RELEASE


def releases(metrics: GatewayMetrics) -> float:
    return metrics.registry.get_sample_value("tutor_gateway_engine_releases_total") or 0.0


def query(engine: FakeEngine, connection: int) -> dict[str, list[str]]:
    return parse_qs(urlsplit(engine.requests[connection][0]).query)


@contextlib.asynccontextmanager
async def relayed(
    engine: FakeEngine, query: str = "", release: float = RELEASE
) -> AsyncIterator[tuple[ClientConnection, GatewayMetrics]]:
    """A client relayed to ``engine`` by a relay that gives idle connections up after
    ``release`` seconds; yields (client, the relay's metrics)."""
    async with (
        engine.running(),
        relay_to(ListRouter(engine), release_seconds=release) as (url, metrics),
        connect(url + query) as client,
    ):
        yield client, metrics


async def test_an_idle_session_gives_its_engine_connection_up_and_its_next_message_reopens_it() -> (
    None
):
    engine = FakeEngine()
    async with relayed(engine, "?events=0") as (client, metrics):
        await client.send(json.dumps({"type": "options", "stream": True}))
        assert (await recv(client))["type"] == "options"
        await client.send(text("one"))
        assert (await recv(client))["type"] == "text_delta"
        assert (await recv(client))["content"] == "echo: one"
        await engine.wait_ended(len(engine.connections))  # idle now: every one is given up
        assert set(engine.ended) == {1000}, "normal closes, from the gateway"
        assert releases(metrics) == len(engine.ended) >= 1
        opened = len(engine.connections)
        await client.send(text("two"))
        assert (await recv(client))["type"] == "text_delta"
        assert (await recv(client))["content"] == "echo: two"
        assert len(engine.connections) == opened + 1, "a new one took it"
        assert query(engine, -1)["stream"] == ["1"], "opened where the last left off"
        assert query(engine, -1)["events"] == ["0"], "with the client's own query"
        assert engine.received[-1] == text("two")


async def test_a_connection_that_never_sent_a_frame_is_given_up_too() -> None:
    engine = FakeEngine(receipts=False)  # an older engine: nothing to know about it
    async with relayed(engine) as (client, metrics):
        await engine.wait_ended(1)
        assert releases(metrics) == 1  # the client is silent: nothing opens another yet
        await client.send(text("late"))
        assert await recv(client) == {"type": "text", "content": "echo: late"}
        assert len(engine.connections) == 2


@pytest.mark.parametrize(
    ("frame", "receipts"),
    [
        (text("hang"), True),  # a reply in flight (started, never done)
        (json.dumps({"type": "audio_start"}), True),  # an open audio stream ("held")
        (text("one"), False),  # an engine without receipts: its state is not known
    ],
    ids=["reply-in-flight", "audio-stream-open", "no-receipts"],
)
async def test_an_engine_connection_that_holds_something_is_kept(
    frame: str, receipts: bool
) -> None:
    engine = FakeEngine(receipts=receipts)
    async with relayed(engine) as (client, metrics):
        await client.send(frame)
        await engine.wait_received(1)
        before = len(engine.ended)  # 0, unless the fresh connection went before the frame came
        await asyncio.sleep(QUIET)
        assert len(engine.ended) == before and releases(metrics) == before
        await client.send(text("still there?"))
        await engine.wait_received(2)
        assert len(engine.connections) == before + 1, "the one holding the frame took it"


async def test_engine_frames_keep_a_connection_busy() -> None:
    """Frames the engine sends count as activity, as the client's do: a frame every 0.1 s for
    3 s keeps a connection whose release time is 2 s (only a stall of 1.9 s could fail it)."""
    engine = FakeEngine()
    async with relayed(engine, release=2.0) as (client, metrics):
        await client.send(text("one"))
        assert (await recv(client))["content"] == "echo: one"
        before = len(engine.ended)  # 0, unless the fresh connection went before "one" came
        for _ in range(30):
            await asyncio.sleep(0.1)
            await engine.connections[-1].send(json.dumps({"type": "status"}))
            assert (await recv(client))["type"] == "status"
        assert len(engine.ended) == before and releases(metrics) == before
        await engine.wait_ended(before + 1)  # once they stop


def test_a_real_engine_continues_the_connection_it_gave_up(
    gateway_process: GatewayStarter,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Through a gateway process and its mock engine process: reply audio, reply ids and the
    streaming mode go on."""
    gateway = gateway_process(STATE_DIR=tmp_path / "state", ENGINE_IDLE_RELEASE_SECONDS="0.3")
    session = create_session(gateway, tutor_id=1)
    with connect_session(gateway, session) as ws:
        options = {"type": "options", "stream": True, "audio_format": "pcm16", "sample_rate": 8000}
        ws.send(json.dumps(options))
        assert recv_json(ws)["type"] == "options"
        ws.send(json.dumps({"type": "text", "content": "one"}))
        while (first := recv_json(ws))["type"] != "text":
            pass
        assert first["reply_id"] == 1
        wait_for(lambda: released(gateway.http) >= 1, 30, "the engine connection given up")
        wav = base64.b64encode(make_wav("And two?")).decode()
        ws.send(json.dumps({"type": "audio", "data": wav}))
        events = [recv_json(ws)]
        while events[-1]["type"] != "text":
            events.append(recv_json(ws))
    assert [e["type"] for e in events][:2] == ["transcription", "text_delta"]
    assert {e["reply_id"] for e in events} == {2}
    chunks = [e for e in events if e["type"] == "audio_chunk"]
    assert chunks and {(c["format"], c["sample_rate"]) for c in chunks} == {("pcm16", 8000)}


def released(base: str) -> float:
    found = scrape(f"{base}/metrics")
    return found.total("tutor_gateway_engine_releases_total")
