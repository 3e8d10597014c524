"""History through real engines on a real store (a SQLite file, a redis-server process).

Engines sharing a store continue each other's sessions; a DELETE on one engine stops a reply
finishing on another from writing; a store outage costs history, never an answer.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from tutor_engine.backends import Backends
from tutor_engine.backends.mock import MockASR, MockLLM, MockTTS

from ..support.redis_server import RedisServer
from .conftest import engine, recv, recv_until, serve
from .stores import StoreKit

SHARED = ["sqlite", "redis"]


# The store's bound in the outage tests: under SQLite's 2 s busy timeout, so a locked write
# times out first; with room for a loaded machine before the outage. Others keep 2 s.
OUTAGE_TIMEOUT = 1.0


def shared_engine(kit: StoreKit, delay_s: float = 0.0, **settings: Any) -> FastAPI:
    """A mock engine (tutor 5) on the kit's store; ``delay_s`` per word of a reply."""
    backends = Backends(llm=MockLLM(5, delay_s=delay_s), asr=MockASR(), tts=MockTTS())
    return engine(backends, tutor_id=5, history_url=kit.url, **settings)


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(url)


async def metric(http: str, name: str, **labels: str) -> float:
    """One sample of the engine's /metrics (0 if absent)."""
    for family in text_string_to_metric_families((await get(f"{http}/metrics")).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def ask(ws: Any, text: str) -> dict[str, Any]:
    await ws.send(f'{{"type": "text", "content": "{text}"}}')
    return await recv(ws)


@pytest.mark.parametrize("store_kit", SHARED, indirect=True)
async def test_any_engine_continues_a_conversation_another_began(store_kit: StoreKit) -> None:
    with serve(shared_engine(store_kit)) as one, serve(shared_engine(store_kit)) as two:
        async with websockets.connect(f"{one.ws}/ws/s1") as ws:
            assert "turn 1, with 0 earlier" in (await ask(ws, "hello"))["content"]
        async with websockets.connect(f"{two.ws}/ws/s1") as ws:
            assert "turn 2, with 2 earlier" in (await ask(ws, "and now?"))["content"]
        async with websockets.connect(f"{two.ws}/ws/s2") as ws:
            assert "turn 1, with 0 earlier" in (await ask(ws, "someone else"))["content"]


@pytest.mark.parametrize("store_kit", SHARED, indirect=True)
async def test_a_delete_on_one_engine_stops_a_reply_finishing_on_another(
    store_kit: StoreKit,
) -> None:
    with serve(shared_engine(store_kit)) as one, serve(shared_engine(store_kit, 0.05)) as two:
        async with websockets.connect(f"{two.ws}/ws/gone?stream=1") as ws:
            await ws.send('{"type": "text", "content": "tell me a long story"}')
            assert (await recv(ws))["type"] == "text_delta"
            async with httpx.AsyncClient() as http:
                assert (await http.delete(f"{one.http}/sessions/gone")).status_code == 204
            final = (await recv_until(ws, "text"))[-1]
            assert final["final"] is True  # the reply is not cut on the other engine...
            assert not store_kit.has_history("gone")  # ...but cannot write the history
            error = await ask(ws, "are you there?")
            assert error["type"] == "error" and error["content"].startswith("This session has")


@pytest.mark.parametrize("store_kit", SHARED, indirect=True)
async def test_a_store_outage_costs_history_never_the_answer(store_kit: StoreKit) -> None:
    with serve(shared_engine(store_kit, history_timeout_seconds=OUTAGE_TIMEOUT)) as running:
        async with websockets.connect(f"{running.ws}/ws/s") as ws:
            assert "turn 1," in (await ask(ws, "one"))["content"]
            with store_kit.down():
                reply = await ask(ws, "two")
                assert reply["type"] == "text" and "heard: two" in reply["content"]
                error = await recv(ws)
                assert error["type"] == "error" and "history" in error["content"]
                assert "saved" in error["content"]
                ready = await get(f"{running.http}/readyz")
                assert ready.status_code == 200
                assert ready.json()["history"] == {"store": store_kit.kind, "healthy": False}
            # Back: the next turns are saved again (the restarted test Redis starts empty).
            assert (await ask(ws, "three"))["type"] == "text"
            fourth = (await ask(ws, "four"))["content"]
        assert (await get(f"{running.http}/readyz")).json()["history"]["healthy"] is True
        saves = await metric(running.http, "tutor_engine_history_errors_total", op="save")
        loads = await metric(running.http, "tutor_engine_history_errors_total", op="load")
    assert saves == 1
    if store_kit.kind == "redis":  # nothing answered: loading failed too
        assert loads == 1 and "could not be loaded" not in error["content"]
        assert "turn 1, with 0 earlier" in reply["content"]
        assert "turn 2, with 2 earlier" in fourth  # "three" was saved
    else:  # a locked SQLite file still serves reads (WAL)
        assert loads == 0 and "turn 2, with 2 earlier" in reply["content"]
        assert "turn 3, with 4 earlier" in fourth  # "one" and "three"


async def test_the_redis_password_is_used_and_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "pw-s3cret-9f2"
    caplog.set_level(logging.INFO)
    with RedisServer(password=secret) as server:
        with_url = f"redis://:{secret}@127.0.0.1:{server.port}/0"
        kit = StoreKit("redis", with_url, server=server)
        apps = [
            shared_engine(kit),  # the password in the URL
            engine(history_url=server.url, history_password=secret),  # or in its own setting
            engine(
                history_url=server.url, history_password="bad-pw-7c1", history_timeout_seconds=0.5
            ),
        ]
        with serve(apps[0]) as one, serve(apps[1]) as two, serve(apps[2]) as wrong:
            async with websockets.connect(f"{one.ws}/ws/pw") as ws:
                assert "turn 1," in (await ask(ws, "hi"))["content"]
            async with websockets.connect(f"{two.ws}/ws/pw") as ws:
                assert "with 2 earlier" in (await ask(ws, "again"))["content"]
            async with websockets.connect(f"{wrong.ws}/ws/pw") as ws:
                reply = await ask(ws, "third")
                assert reply["type"] == "text" and "with 0 earlier" in reply["content"]
                assert (await recv(ws))["type"] == "error"
            assert await metric(wrong.http, "tutor_engine_history_errors_total", op="load") == 1
    assert "redis://:***@127.0.0.1" in caplog.text
    assert any(r.levelno == logging.WARNING and "load failed" in r.message for r in caplog.records)
    assert secret not in caplog.text and "bad-pw-7c1" not in caplog.text


@pytest.mark.parametrize("store_kit", SHARED, indirect=True)
async def test_a_delete_during_an_outage_is_refused_with_503(store_kit: StoreKit) -> None:
    with serve(shared_engine(store_kit, history_timeout_seconds=OUTAGE_TIMEOUT)) as running:
        with store_kit.down():
            async with httpx.AsyncClient() as http:
                response = await http.delete(f"{running.http}/sessions/later")
        assert response.status_code == 503
        assert response.json()["detail"].startswith("History store unavailable")
        assert await metric(running.http, "tutor_engine_history_errors_total", op="end") == 1
