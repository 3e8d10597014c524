"""SIGTERM drains a real engine process: the reply in flight finishes, new sessions are refused,
the socket closes with 1012, and the process exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from tutor_contract.relay import RELAY_HEADER, parse_receipt
from tutor_engine.history.sqlite import SqliteStore

from tests.support.processes import (
    ServerProcess,
    engine_argv,
    free_port,
    launch_server,
    wait_ready,
)

RELAY = {RELAY_HEADER: "1"}


@pytest.fixture
def engine_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``python -m tutor_engine`` (mock backends) with extra ENGINE_* variables."""
    started: list[ServerProcess] = []

    def start(**env: Any) -> ServerProcess:
        port = free_port()
        variables = {
            "ENGINE_LLM_BACKEND": "mock",
            "ENGINE_ASR_BACKEND": "mock",
            "ENGINE_TTS_BACKEND": "mock",
            "ENGINE_API_KEY": "",
            **{f"ENGINE_{k.upper()}": str(v) for k, v in env.items()},
        }
        log_path = tmp_path / f"engine-{len(started)}.log"
        engine = launch_server(engine_argv(port), variables, port, log_path)
        started.append(engine)
        wait_ready(engine, "/readyz")
        return engine

    yield start
    for engine in started:  # the tests signal it themselves: nothing graceful is left to do
        if engine.alive():
            engine.process.kill()
            engine.process.wait()


def label(frame: str | bytes) -> str:
    receipt = parse_receipt(frame)
    if receipt is not None:
        return f"{'started' if receipt.started else 'done'} {receipt.seq}"
    return json.loads(frame)["type"]


async def until_draining(engine: ServerProcess) -> None:
    """Wait for /readyz to say 503 "draining" (the signal is handled asynchronously)."""
    async with httpx.AsyncClient(base_url=engine.http) as http, asyncio.timeout(30):
        while True:
            response = await http.get("/readyz")
            if response.status_code == 503:
                assert response.json()["reason"] == "draining"
                return
            await asyncio.sleep(0.02)


async def exit_code(engine: ServerProcess, within: float) -> int:
    return await asyncio.to_thread(engine.process.wait, within)


async def closed_with(ws: Any) -> list[str]:
    """Labels of the frames a socket still gets before it closes; asserts the 1012 close."""
    seen: list[str] = []
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            seen.append(label(await ws.recv()))
    assert ws.close_code == 1012
    return seen


async def test_sigterm_lets_the_reply_finish_refuses_new_sessions_and_exits_0(
    engine_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    db = tmp_path / "history.db"
    # The reply (about 100 words at 50 ms) outlasts the checks made while it is in flight.
    engine = engine_process(
        llm_mock_token_seconds=0.05, drain_seconds=60, history_url=f"sqlite:///{db}"
    )
    url = f"{engine.ws}/ws/drained?stream=1"
    async with websockets.connect(url, additional_headers=RELAY) as ws:
        story = "tell me a long story" + " please" * 80
        await ws.send(json.dumps({"type": "text", "content": story}))
        assert [label(await ws.recv()), label(await ws.recv())] == ["started 1", "text_delta"]
        engine.process.send_signal(signal.SIGTERM)
        await until_draining(engine)
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"{engine.ws}/ws/newcomer")
        assert refused.value.response.status_code == 503
        seen = await closed_with(ws)
    assert seen[-2:] == ["text", "done 1"] and set(seen[:-2]) <= {"text_delta"}
    assert await exit_code(engine, within=60) == 0
    assert "Traceback" not in engine.log()
    history = await SqliteStore(db, 40, 60).load("drained")
    assert history is not None and history[-1].content.endswith("in this session.")


async def test_a_turn_past_the_drain_deadline_is_cut_and_queued_frames_never_start(
    engine_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    db = tmp_path / "history.db"
    # Replies take about 6 s, the drain 2 s.
    engine = engine_process(
        llm_mock_token_seconds=0.3, drain_seconds=2, history_url=f"sqlite:///{db}"
    )
    async with (
        websockets.connect(f"{engine.ws}/ws/cut?stream=1", additional_headers=RELAY) as cut,
        websockets.connect(f"{engine.ws}/ws/queued", additional_headers=RELAY) as queued,
    ):
        await cut.send('{"type": "text", "content": "a reply far longer than the drain"}')
        await queued.send('{"type": "text", "content": "answered for a while"}')
        await queued.send('{"type": "text", "content": "still waiting"}')
        assert [label(await cut.recv()), label(await cut.recv())] == ["started 1", "text_delta"]
        assert label(await queued.recv()) == "started 1"
        engine.process.send_signal(signal.SIGTERM)
        # No "done 1": the gateway ends a cut reply itself; and frame 2 never started, so
        # the gateway sends it to the next engine.
        assert set(await closed_with(cut)) <= {"text_delta"}
        assert await closed_with(queued) == []
    assert await exit_code(engine, within=30) == 0
    history = await SqliteStore(db, 40, 60).load("cut")
    assert history is not None and history[0].content.startswith("a reply far longer")
    assert len(history) == 2 and history[1].content.startswith("Tutor")  # as far as it got
