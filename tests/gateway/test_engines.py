"""Per-tutor engine processes behind the gateway: reuse, isolation, idling, crashes, expiry."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tutor_engine.history.sqlite import SqliteStore
from tutor_gateway.app import create_app
from tutor_gateway.config import GatewaySettings
from websockets.exceptions import ConnectionClosed

from tests.servers import RunningServer, serve
from tests.support.waiting import wait_for

from .helpers import create_session, open_ws, recv, say
from .test_websocket import closed_with


def engines(server: RunningServer) -> dict[int, int]:
    """Running engine processes of a gateway: tutor id → pid."""
    running = server.app.state.gateway.router.running
    return {tutor: engine.process.pid for tutor, engine in running.items()}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_tutors_get_two_engines_and_one_tutor_reuses_its_engine(
    gateway: RunningServer,
) -> None:
    a1, a2 = create_session(gateway, tutor_id=1), create_session(gateway, tutor_id=1)
    b = create_session(gateway, tutor_id=2)
    assert engines(gateway) == {}, "engines start on demand, not at session creation"
    for session, tutor in ((a1, 1), (a2, 1), (b, 2)):
        with open_ws(gateway, session) as ws:
            assert f"Tutor {tutor} heard" in say(ws, "hi")["content"]
    running = engines(gateway)
    assert set(running) == {1, 2}
    assert running[1] != running[2]
    assert all(pid_alive(pid) for pid in running.values())
    with open_ws(gateway, a1) as ws:
        say(ws, "again")
    assert engines(gateway) == running


def test_history_stays_within_its_session(gateway: RunningServer) -> None:
    first, second = create_session(gateway, tutor_id=3), create_session(gateway, tutor_id=3)
    with open_ws(gateway, first) as ws:
        say(ws, "my name is Ada")
        assert "turn 2, with 2 earlier messages" in say(ws, "what is my name")["content"]
    with open_ws(gateway, second) as ws:
        reply = say(ws, "who am I")["content"]
    assert "turn 1, with 0 earlier messages" in reply
    with open_ws(gateway, first) as ws:
        assert "turn 3, with 4 earlier messages" in say(ws, "back again")["content"]


def stored_history(server: RunningServer, session_id: str) -> list[str] | None:
    """The session's messages in the local history store; ``None`` once it has ended."""

    async def load() -> list[str] | None:
        path = Path(server.app.state.gateway.settings.state_dir) / "history.db"
        store = SqliteStore(path, max_messages=40, ttl_seconds=3600)
        try:
            messages = await store.load(session_id)
        finally:
            await store.close()
        return None if messages is None else [m.content for m in messages]

    return asyncio.run(load())


def test_ended_session_history_is_dropped_from_the_store(gateway: RunningServer) -> None:
    session = create_session(gateway, tutor_id=5)
    with open_ws(gateway, session) as ws:
        say(ws, "remember me")
    assert "remember me" in (stored_history(gateway, session["session_id"]) or [])
    response = httpx.delete(f"{gateway.http}/v1/sessions/{session['session_id']}")
    assert response.status_code == 204
    assert stored_history(gateway, session["session_id"]) is None


def test_killed_engine_is_replaced_under_the_same_socket(gateway: RunningServer) -> None:
    session = create_session(gateway, tutor_id=6)
    with open_ws(gateway, session) as ws:
        say(ws, "before the crash")
        old_pid = engines(gateway)[6]
        os.kill(old_pid, signal.SIGKILL)
        reply = say(ws, "after the crash")  # nothing was in flight: no error either
    assert reply["type"] == "text" and "after the crash" in reply["content"]
    assert engines(gateway)[6] != old_pid


def test_idle_engine_stops_and_restarts_on_demand(gateway_factory) -> None:
    server = gateway_factory(engine_idle_timeout_seconds=1, reaper_interval_seconds=0.2)
    session = create_session(server, tutor_id=7)
    with open_ws(server, session) as ws:
        say(ws, "hello")
    pid = engines(server)[7]
    time.sleep(1.5)
    assert engines(server) == {7: pid}, "an engine with a live session is kept"
    httpx.delete(f"{server.http}/v1/sessions/{session['session_id']}")
    wait_for(lambda: 7 not in engines(server) and not pid_alive(pid), 30, "engine 7 stopped")
    again = create_session(server, tutor_id=7)
    with open_ws(server, again) as ws:
        assert say(ws, "wake up")["type"] == "text"
    assert engines(server)[7] != pid


def test_sessions_expire_without_activity(gateway_factory) -> None:
    server = gateway_factory(session_timeout_seconds=2, reaper_interval_seconds=0.2)
    with open_ws(server, create_session(server)) as warm:
        say(warm, "warm up")  # the engine's cold start must not eat into the idle timeout
    idle, busy = create_session(server), create_session(server)
    with open_ws(server, busy) as busy_ws, open_ws(server, idle) as ws:
        say(ws, "hello")
        started = time.monotonic()
        while time.monotonic() - started < 3:
            say(busy_ws, "still here")
            time.sleep(0.4)
        assert "expired" in closed_with(ws, 4408).lower()
    for session, code in ((idle, 404), (busy, 200)):
        response = httpx.get(f"{server.http}/v1/sessions/{session['session_id']}")
        assert response.status_code == code
    assert httpx.get(f"{server.http}/health").json()["active_sessions"] == 1
    with open_ws(server, idle) as ws:
        closed_with(ws, 4408)


def test_engine_that_fails_to_start_gives_an_error(gateway_factory) -> None:
    command = f"{sys.executable} -c 'import sys; sys.exit(3)'"
    server = gateway_factory(engine_command=command)
    session = create_session(server)
    with open_ws(server, session) as ws:
        error = closed_with(ws, 4503)
    assert "failed to start" in error and "code 3" in error
    assert httpx.get(f"{server.http}/v1/sessions/{session['session_id']}").status_code == 200


def test_engine_that_never_gets_ready_times_out(gateway_factory) -> None:
    command = f"{sys.executable} -c 'import time; time.sleep(60)'"
    server = gateway_factory(engine_command=command, engine_start_timeout_seconds=1)
    session = create_session(server)
    with open_ws(server, session) as ws:
        assert "unavailable" in closed_with(ws, 4503).lower()


def test_client_cli_talks_through_the_gateway(gateway: RunningServer) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tutor_gateway.client",
            "--base-url",
            gateway.http,
            "--tutor-id",
            "8",
            "--text",
            "你好",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert "engine_token" not in lines[0]
    assert lines[1]["type"] == "text" and "你好" in lines[1]["content"]
    assert httpx.get(f"{gateway.http}/v1/sessions").json()["total"] == 0


def test_gateway_shutdown_closes_connections_and_stops_its_engines(tmp_path) -> None:
    """Uvicorn closes open WebSockets first (1000), then the lifespan stops the engines."""
    settings = GatewaySettings(_env_file=None, state_dir=str(tmp_path))
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(serve(create_app(settings)))
        ws = stack.enter_context(open_ws(server, create_session(server, tutor_id=9)))
        say(ws, "hi")
        pid = engines(server)[9]
        stack.pop_all().close()  # stop the server first, keep the client socket open
        assert not pid_alive(pid)
        with pytest.raises(ConnectionClosed) as info:
            while True:
                recv(ws, timeout=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1000
