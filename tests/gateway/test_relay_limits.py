"""The relay's bounds and patience against real engine processes: takeover, cold starts that
outlive their first client, busy engines that are not dead, and replies that keep a session."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.waiting import wait_for

from .helpers import create_session, open_ws, recv, say
from .test_engines import engines
from .test_websocket import closed_with


@pytest.mark.parametrize("limit", [1, 2])
def test_a_newer_connection_takes_over_past_the_limit(gateway_factory, limit: int) -> None:
    gateway = gateway_factory(max_connections_per_session=limit)
    session = create_session(gateway)
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(open_ws(gateway, session)) for _ in range(limit)]
        for ws in sockets:
            assert say(ws, "hi")["type"] == "text"
        newest = stack.enter_context(open_ws(gateway, session))
        assert "newer connection" in closed_with(sockets[0], 4409)
        for ws in sockets[1:]:
            assert say(ws, "still here")["type"] == "text"
        assert say(newest, "mine now")["type"] == "text"


def test_an_engine_start_outlives_the_client_that_caused_it(gateway_factory) -> None:
    # The engine takes ~2 s before it even binds its models: the first client leaves meanwhile.
    slow_engine = f"sh -c 'sleep 2; exec {shlex.quote(sys.executable)} -m tutor_engine \"$@\"' sh"
    gateway = gateway_factory(engine_command=slow_engine)
    session = create_session(gateway, tutor_id=5)
    router = gateway.app.state.gateway.router
    with open_ws(gateway, session) as impatient:
        impatient.send(json.dumps({"type": "text", "content": "anyone?"}))
        wait_for(lambda: 5 in router._starting, 30, "engine 5 starting")
        start = router._starting[5]
    with open_ws(gateway, session) as patient:
        reply = say(patient, "hello")
    assert reply["type"] == "text" and "Tutor 5 heard: hello" in reply["content"]
    assert not start.cancelled(), "the start goes on without the client that asked for it"
    assert start.result() is router.running[5], "the next client got the engine of that start"
    assert list(engines(gateway)) == [5]


def test_a_busy_engine_is_waited_for_not_replaced(gateway_factory) -> None:
    gateway = gateway_factory(engine_connect_timeout_seconds=0.5)
    first, second = create_session(gateway, tutor_id=6), create_session(gateway, tutor_id=6)
    with open_ws(gateway, first) as ws:
        say(ws, "warm up")
        (pid,) = engines(gateway).values()
        os.kill(pid, signal.SIGSTOP)  # the engine answers nothing: handshakes time out
        with open_ws(gateway, second) as late:
            try:
                late.send(json.dumps({"type": "text", "content": "are you busy"}))
                router = gateway.app.state.gateway.router
                wait_for(
                    lambda: router.running[6].failing_since is not None, 30, "engine 6 failing"
                )
                time.sleep(1.0)  # several handshakes time out meanwhile
            finally:
                os.kill(pid, signal.SIGCONT)
            assert "are you busy" in recv(late)["content"]
        assert say(ws, "and me")["type"] == "text", "the other student kept the engine"
    assert engines(gateway) == {6: pid}


def test_a_reply_in_flight_keeps_the_session_from_expiring(gateway_factory, monkeypatch) -> None:
    monkeypatch.setenv("ENGINE_LLM_MOCK_TOKEN_SECONDS", "0.3")
    gateway = gateway_factory(session_timeout_seconds=3, reaper_interval_seconds=0.2)
    session = create_session(gateway)
    with open_ws(gateway, session) as ws:
        say(ws, "warm")  # the engine is started and warm; replies take ~0.3 s per word
        started = time.monotonic()
        reply = say(ws, " ".join(["word"] * 14))  # ~6 s without a frame from the engine
        assert time.monotonic() - started > 3, "the reply took longer than the idle timeout"
    assert reply["type"] == "text"
    got = httpx.get(f"{gateway.http}/v1/sessions/{session['session_id']}")
    assert got.status_code == 200


def test_idle_expiry_still_applies_when_nothing_is_in_flight(gateway_factory) -> None:
    gateway = gateway_factory(session_timeout_seconds=1.5, reaper_interval_seconds=0.2)
    session = create_session(gateway)
    with open_ws(gateway, session) as ws:
        say(ws, "hello")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                recv(ws, timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408
