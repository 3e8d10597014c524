"""Cold start tells the client what is happening (local mode, real engine processes).

A slow-loading mock engine (ENGINE_LLM_MOCK_LOAD_SECONDS): a client that opted in gets
``status`` messages while it waits, then ``ready`` and its answer; a seed client gets only the
answer; REST's ``engine`` object follows the start. An engine whose LLM server is unreachable
names it on ``/readyz``, in REST and in the client's 4503 ``error``. Plus the pure parts of
``tutor_gateway.startup``. No timing assertions: only what is seen, in order.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import httpx
import pytest
from tutor_contract.crd import ACTIVE, ASSIGNED, LOADING, PENDING, SCHEDULING
from tutor_engine.app import create_app as create_engine
from tutor_engine.config import EngineSettings
from tutor_gateway.config import engine_llm_wait
from tutor_gateway.startup import (
    CONNECTING,
    NOT_STARTED,
    STATES,
    EngineState,
    StatusFeed,
    client_state,
    cluster_engine_state,
    options_events,
    unavailable_detail,
    waiting_view,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.gateway.helpers import create_session, recv
from tests.servers import RunningServer, serve

STATUS_KEYS = {"type", "state", "reason", "message", "elapsed_seconds", "timestamp"}
SEED_TEXT_KEYS = {"type", "content", "role", "timestamp"}
LOAD_SECONDS = "3"


# --- the pure parts ----------------------------------------------------------------------------


def test_each_operator_reason_has_a_client_state() -> None:
    assert client_state("ScalingUp") == "starting"
    assert client_state("Scheduling") == "scheduling"
    assert client_state("Pulling") == client_state("ImagePullBackOff") == "pulling"
    assert client_state("Loading") == client_state("ModelLoadFailed") == "loading"
    assert client_state("Assigned") == client_state("Ready") == "ready"
    assert client_state("SomethingNew") == "starting"
    assert set(STATES) == {"starting", "scheduling", "pulling", "loading", "ready"}


def test_a_tutorsession_gives_its_engine_state() -> None:
    obj = {
        "metadata": {"name": "s1", "creationTimestamp": "2024-12-22T12:00:00Z"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "Scheduling",
                    "message": "pod tutor-1-x: 0/3 nodes have a free GPU",
                    "lastTransitionTime": "2024-12-22T12:00:02Z",
                }
            ],
        },
    }
    state = cluster_engine_state(obj)
    assert state == EngineState(
        PENDING, SCHEDULING, "pod tutor-1-x: 0/3 nodes have a free GPU", state.since
    )
    assert state.as_json() == {
        "phase": "Pending",
        "reason": "Scheduling",
        "message": "pod tutor-1-x: 0/3 nodes have a free GPU",
        "since": "2024-12-22T12:00:02Z",
    }
    fresh = cluster_engine_state({"metadata": {"creationTimestamp": "2024-12-22T12:00:00Z"}})
    assert (fresh.phase, fresh.reason, fresh.as_json()["since"]) == (
        PENDING,
        PENDING,
        "2024-12-22T12:00:00Z",
    )


def test_ready_shows_only_once_relayed() -> None:
    ready = EngineState(ACTIVE, ASSIGNED, "pinned to pod tutor-1-x")
    assert waiting_view(ready, waited=0.2) is None  # a warm engine's client hears just `ready`
    assert waiting_view(ready, waited=5) == ("starting", CONNECTING, waiting_view(ready, 5)[2])
    loading = EngineState(PENDING, LOADING, "pod p: engine is loading its models")
    assert waiting_view(loading, waited=0) == ("loading", LOADING, loading.message)


def test_the_options_opt_in_is_read_only_from_small_options_messages() -> None:
    assert options_events('{"type": "options", "events": true}') is True
    assert options_events('{"type": "options", "events": false, "stream": true}') is False
    assert options_events('{"type": "options", "stream": true}') is None
    assert options_events('{"type": "text", "content": "options"}') is None
    assert options_events('{"type": "options", "events": "yes"}') is None
    assert options_events("not json, but options") is None
    big = json.dumps({"type": "options", "events": True, "pad": "x" * 2000})
    assert options_events(big) is None


def test_the_4503_text_adds_the_last_state_once() -> None:
    state = EngineState(PENDING, LOADING, "LLM server http://vllm:8000 unreachable: refused")
    assert unavailable_detail("not ready after 5s", state) == (
        "not ready after 5s; last state: Loading: LLM server http://vllm:8000 unreachable: refused"
    )
    already = f"failed to start: {state.message}"
    assert unavailable_detail(already, state) == already
    assert unavailable_detail("gone", None) == "gone"


def test_local_engines_wait_for_their_llm_a_little_less_than_the_gateway() -> None:
    assert engine_llm_wait(120) == 110
    assert engine_llm_wait(3) == 2.7
    assert engine_llm_wait(3600) == 3590


async def test_the_feed_sends_on_change_and_says_ready_once_connected() -> None:
    sent: list[dict[str, Any]] = []
    now = [100.0]
    state = [EngineState(PENDING, "ScalingUp", "scaling tutor-1 up from zero")]

    async def send(frame: dict[str, Any]) -> None:
        sent.append(frame)

    feed = StatusFeed(send, lambda: state[0], enabled=False, interval=3, clock=lambda: now[0])
    feed.wait_began()
    await feed.tick()
    assert sent == []  # not opted in
    feed.peek('{"type": "options", "events": true}')
    await feed.tick()
    await feed.tick()  # unchanged, within the interval: nothing new
    now[0] += 4
    await feed.tick()  # the interval passed: the same state again
    state[0] = EngineState(PENDING, LOADING, "pod p: engine is loading its models")
    now[0] += 1
    await feed.tick()
    state[0] = EngineState(ACTIVE, ASSIGNED, "pinned to pod p")
    await feed.connected()
    await feed.tick()  # not waiting any more
    assert [(f["state"], f["reason"], f["elapsed_seconds"]) for f in sent] == [
        ("starting", "ScalingUp", 0),
        ("starting", "ScalingUp", 4),
        ("loading", LOADING, 5),
        ("ready", ASSIGNED, 5),
    ]
    assert all(set(f) == STATUS_KEYS and f["type"] == "status" for f in sent)


async def test_a_quiet_wait_says_ready_only_after_a_status() -> None:
    """An idle session reconnecting to its engine (``wait_began(quiet=True)``)."""
    sent: list[dict[str, Any]] = []
    state = [EngineState(ACTIVE, ASSIGNED, "pinned to pod p")]
    now = [100.0]

    async def send(frame: dict[str, Any]) -> None:
        sent.append(frame)

    feed = StatusFeed(send, lambda: state[0], enabled=True, clock=lambda: now[0])
    await feed.connected()
    assert [f["state"] for f in sent] == ["ready"], "the first connection's"
    feed.wait_began(quiet=True)
    await feed.tick()  # the engine is there: nothing to show yet
    await feed.connected()
    assert len(sent) == 1, "a quick reconnect is not announced"
    feed.wait_began(quiet=True)
    state[0] = EngineState(PENDING, LOADING, "pod p: engine is loading its models")
    await feed.tick()
    state[0] = EngineState(ACTIVE, ASSIGNED, "pinned to pod p")
    await feed.connected()
    assert [f["state"] for f in sent] == ["ready", "loading", "ready"]


# --- real servers ------------------------------------------------------------------------------


@pytest.fixture
def slow_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines started from here take a while to load their (mock) LLM."""
    monkeypatch.setenv("ENGINE_LLM_MOCK_LOAD_SECONDS", LOAD_SECONDS)


def ws_connect(server: RunningServer, session: dict[str, Any], query: str = "") -> ClientConnection:
    url = f"{server.ws}/ws/ws/{session['session_id']}?token={session['engine_token']}{query}"
    return connect(url, max_size=None, open_timeout=30)


def engine_of(server: RunningServer, session: dict[str, Any]) -> dict[str, Any]:
    info = httpx.get(f"{server.http}/v1/sessions/{session['session_id']}").json()
    return info["engine"]


def until_ready(ws: ClientConnection, seen: list[dict[str, Any]] | None = None) -> list[dict]:
    """The status messages up to and including ``ready``."""
    statuses: list[dict[str, Any]] = []
    while True:
        message = recv(ws, timeout=60)
        if seen is not None:
            seen.append(message)
        assert message["type"] == "status", message
        assert set(message) == STATUS_KEYS, message
        assert message["state"] in STATES
        statuses.append(message)
        if message["state"] == "ready":
            return statuses


def test_an_opted_in_client_hears_the_cold_start_then_gets_its_answer(
    slow_engines: None, gateway_factory
) -> None:
    gateway = gateway_factory()
    session = create_session(gateway, tutor_id=31)
    before = engine_of(gateway, session)
    assert (before["phase"], before["reason"]) == (PENDING, NOT_STARTED)

    rest_while_loading: list[dict[str, Any]] = []
    with ws_connect(gateway, session, "&events=1") as ws:
        ws.send(json.dumps({"type": "text", "content": "hello, cold tutor"}))
        statuses: list[dict[str, Any]] = []
        while not statuses or statuses[-1]["state"] != "ready":
            message = recv(ws, timeout=60)
            assert message["type"] == "status" and set(message) == STATUS_KEYS, message
            statuses.append(message)
            if message["state"] == "loading" and not rest_while_loading:
                rest_while_loading.append(engine_of(gateway, session))
        answer = recv(ws)
    assert answer["type"] == "text" and "hello, cold tutor" in answer["content"]
    states = [s["state"] for s in statuses]
    assert states[0] in ("starting", "loading") and states[-1] == "ready"
    assert "loading" in states
    assert states.count("ready") == 1
    loading = next(s for s in statuses if s["state"] == "loading")
    assert loading["reason"] == LOADING and "loading" in loading["message"]
    elapsed = [s["elapsed_seconds"] for s in statuses]
    assert elapsed == sorted(elapsed)
    assert rest_while_loading[0]["phase"] == PENDING
    assert rest_while_loading[0]["reason"] == LOADING
    assert rest_while_loading[0]["since"].endswith("Z")
    after = engine_of(gateway, session)
    assert (after["phase"], after["reason"]) == (ACTIVE, "Ready")
    # The seed's fields are still there, unchanged.
    info = httpx.get(f"{gateway.http}/v1/sessions/{session['session_id']}").json()
    assert info["status"] == "active" and info["tutor_id"] == 31
    listed = httpx.get(f"{gateway.http}/v1/sessions").json()["sessions"]
    assert listed[0]["engine"]["phase"] == ACTIVE


def test_a_seed_client_sees_only_the_seed_messages(slow_engines: None, gateway_factory) -> None:
    gateway = gateway_factory()
    session = create_session(gateway, tutor_id=32)
    with ws_connect(gateway, session) as ws:
        ws.send(json.dumps({"type": "text", "content": "just the answer"}))
        answer = recv(ws, timeout=60)
        assert answer["type"] == "text" and set(answer) == SEED_TEXT_KEYS
        assert "just the answer" in answer["content"]
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1)  # nothing else arrived either


def test_the_options_message_opts_in_while_waiting(slow_engines: None, gateway_factory) -> None:
    gateway = gateway_factory()
    session = create_session(gateway, tutor_id=33)
    with ws_connect(gateway, session, "&stream=1") as ws:
        ws.send(json.dumps({"type": "options", "events": True}))
        ws.send(json.dumps({"type": "text", "content": "streamed"}))
        until_ready(ws)
        # The engine took the options frame too: it acknowledges, streaming still on.
        ack = recv(ws)
        assert ack["type"] == "options" and ack["stream"] is True
        kinds = []
        while not kinds or kinds[-1] != "text":
            kinds.append(recv(ws)["type"])
        assert "text_delta" in kinds


def test_after_a_failover_the_client_hears_the_restart(slow_engines: None, gateway_factory) -> None:
    gateway = gateway_factory()
    session = create_session(gateway, tutor_id=34)
    with ws_connect(gateway, session, "&events=1") as ws:
        ws.send(json.dumps({"type": "text", "content": "first"}))
        until_ready(ws)
        assert "first" in recv(ws)["content"]
        engines = gateway.app.state.gateway.router
        os.kill(engines.running[34].process.pid, signal.SIGKILL)
        ws.send(json.dumps({"type": "text", "content": "second"}))
        seen: list[dict[str, Any]] = []
        while True:
            message = recv(ws, timeout=60)
            seen.append(message)
            if message["type"] == "text":
                break
    statuses = [m for m in seen if m["type"] == "status"]
    assert statuses and statuses[-1]["state"] == "ready"
    assert {"starting", "loading"} & {s["state"] for s in statuses[:-1]}
    assert "second" in seen[-1]["content"]


def test_an_unreachable_llm_is_named_on_readyz(closed_port: int) -> None:
    settings = EngineSettings(
        _env_file=None,
        llm_backend="openai",
        llm_base_url=f"http://user:secret@127.0.0.1:{closed_port}/v1",
        llm_wait_seconds=600,
    )
    named = f"LLM server http://127.0.0.1:{closed_port} unreachable: connection refused"
    with serve(create_engine(settings)) as engine:
        for _ in range(600):
            body = httpx.get(f"{engine.http}/readyz").json()
            if body["problem"]:
                break
            httpx.get(f"{engine.http}/healthz")  # a moment
        assert body["ready"] is False and body["error"] is None
        assert body["problem"] == named
        assert body["reason"] == f"models are still loading: {named}"
        assert "secret" not in json.dumps(body)


def test_an_unreachable_llm_is_named_in_rest_and_in_the_4503_error(
    closed_port: int, gateway_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGINE_LLM_BACKEND", "openai")
    monkeypatch.setenv("ENGINE_LLM_BASE_URL", f"http://127.0.0.1:{closed_port}/v1")
    gateway = gateway_factory(engine_start_timeout_seconds=6)
    named = f"LLM server http://127.0.0.1:{closed_port} unreachable: connection refused"
    session = create_session(gateway, tutor_id=35)
    with ws_connect(gateway, session, "&events=1") as ws:
        ws.send(json.dumps({"type": "text", "content": "anyone there?"}))
        messages = []
        while True:
            message = recv(ws, timeout=60)
            messages.append(message)
            if message["type"] == "status" and named in message["message"]:
                rest = engine_of(gateway, session)
                assert (rest["phase"], rest["reason"]) == (PENDING, LOADING)
                assert named in rest["message"]
            if message["type"] == "error":
                break
        error = message["content"]
        with pytest.raises(ConnectionClosed) as closed:
            recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4503
    assert error.startswith("Tutor engine unavailable: ") and named in error
    assert any(m["type"] == "status" and named in m["message"] for m in messages)
    assert not [m for m in messages if m.get("state") == "ready"]
    failed = engine_of(gateway, session)
    assert failed["phase"] == PENDING and named in failed["message"]
