"""Structured logs of real processes: ``python -m tutor_gateway`` and the engines it starts.

With ``LOG_FORMAT=json`` every line the gateway and its engines write (one log file: local
engines inherit the gateway's stderr) is a JSON object with ``time`` (ISO 8601, UTC),
``level``, ``component``, ``logger`` and ``message``; the engine's lines carry its
``tutor_id``, a connection's lines its session's short id. At debug level, where uvicorn and
websockets log every handshake header, no session token, management API key or engine key
appears anywhere in the raw log. ``LOG_FORMAT=text`` (the default) keeps one line a record
with the same facts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from datetime import datetime
from typing import Any

import httpx
import psutil
import pytest
from websockets.sync.client import connect

from tests.support.processes import ServerProcess, stop_server
from tests.support.waiting import wait_for

from ..abuse.conftest import GatewayStarter, gateway_process  # noqa: F401
from .helpers import say

pytestmark = pytest.mark.timeout(180)

KEY = "logs-key-Hq7vM2nB8xL4tR6wZ1cF9gJ3"
ENGINE_KEY = "logs-engine-key-Pk5sD8fA2hW7qE4rT1yU6iO9"
TUTOR = 4
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"(gateway|engine) \S+( \[(?P<context>[^\]]*)\])?: "
)


def settings(**env: Any) -> dict[str, Any]:
    """Debug level everywhere (every handshake header is logged), keys the test can look for."""
    return {
        "LOG_LEVEL": "debug",
        "ENGINE_LOG_LEVEL": "debug",
        "MANAGEMENT_API_KEYS": KEY,
        "ENGINE_API_KEY": ENGINE_KEY,
        **env,
    }


def the_engine(server: ServerProcess) -> int:
    engines = wait_for(server.engines, what="the gateway's engine")
    assert len(engines) == 1, engines
    return next(iter(engines))


def converse(server: ServerProcess) -> tuple[str, str]:
    """A session's life: created, two turns on a ``?token=`` socket with the engine killed
    between them (the relay fails over to a new engine), a turn on a socket that sends its
    token as a subprotocol, deleted; then the gateway stops, so every line is written.
    The session id and its token."""
    headers = {"Authorization": f"Bearer {KEY}"}
    created = httpx.post(
        f"{server.http}/v1/sessions",
        json={"tutor_id": TUTOR, "student_id": 1},
        headers=headers,
        timeout=30,
    )
    assert created.status_code == 201, created.text
    session_id, token = created.json()["session_id"], created.json()["engine_token"]
    url = f"{server.ws}/ws/ws/{session_id}"
    with connect(f"{url}?token={token}", open_timeout=30) as ws:
        assert say(ws, "hello")["type"] == "text"
        killed = the_engine(server)
        os.kill(killed, signal.SIGKILL)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(killed).wait(timeout=30)  # until the gateway has reaped it
        assert say(ws, "are you there")["type"] == "text"  # on the engine started next
    offered = ["tutor.v1", f"token.{token}"]
    # A confused client sends its management key on the socket too: logged, redacted.
    with connect(url, subprotocols=offered, additional_headers=headers, open_timeout=30) as ws:  # type: ignore[arg-type]
        assert say(ws, "hello again")["type"] == "text"
    deleted = httpx.delete(f"{server.http}/v1/sessions/{session_id}", headers=headers, timeout=30)
    assert deleted.status_code == 204
    stop_server(server)
    assert "Application shutdown complete" in server.log(), server.log()[-3000:]
    return session_id, token


def assert_no_secret(log: str, token: str) -> None:
    for secret in (token, KEY, ENGINE_KEY):
        for form in (secret, secret[:12], secret[-12:], json.dumps(secret)[1:-1]):
            assert form not in log, f"{form!r} in the log"


def test_json_lines_of_the_gateway_and_its_engines_name_session_and_tutor(
    gateway_process: GatewayStarter,  # noqa: F811
) -> None:
    server = gateway_process(**settings(LOG_FORMAT="json"))
    session_id, token = converse(server)
    log = server.log()
    assert_no_secret(log, token)
    records = [json.loads(line) for line in log.splitlines()]  # every line, or it fails here
    for record in records:
        assert list(record)[:5] == ["time", "level", "component", "logger", "message"], record
        assert record["time"].endswith("Z"), record
        assert datetime.fromisoformat(record["time"]).utcoffset().total_seconds() == 0
        assert record["level"] in LEVELS and record["component"] in ("gateway", "engine")
        assert isinstance(record["message"], str) and isinstance(record["logger"], str)
    short = session_id[:8]
    assert {r["session"] for r in records if "session" in r} == {short}  # short, never full
    assert session_id not in {r.get("session") for r in records}

    engine = [r for r in records if r["component"] == "engine"]
    assert len({r["message"] for r in engine if "Started server process" in r["message"]}) == 2
    assert all(r["tutor_id"] == TUTOR for r in engine)
    engine_sockets = [r for r in engine if "[accepted]" in r["message"]]
    assert len(engine_sockets) == 3 and all(r["session"] == short for r in engine_sockets)

    gateway = [r for r in records if r["component"] == "gateway"]
    failover = [r for r in gateway if r["logger"] == "tutor_gateway.relay"]
    assert any("engine lost; continued on" in r["message"] for r in failover), failover
    assert all((r["session"], r["tutor_id"]) == (short, TUTOR) for r in failover)
    client_sockets = [r for r in gateway if "[accepted]" in r["message"]]
    assert len(client_sockets) == 2 and all(r["session"] == short for r in client_sockets)
    assert any("token=[REDACTED]" in r["message"] for r in client_sockets)
    # The credentials were logged, redacted: the handshakes at debug level.
    messages = "\n".join(r["message"] for r in records).lower()
    assert "sec-websocket-protocol: tutor.v1, token.[redacted]" in messages
    assert "x-engine-key: [redacted]" in messages
    assert "authorization: [redacted]" in messages
    assert not [r for r in records if "exc_info" in r], "an exception was logged"


def test_text_lines_keep_one_record_a_line_with_the_same_facts(
    gateway_process: GatewayStarter,  # noqa: F811
) -> None:
    server = gateway_process(**settings())  # LOG_FORMAT unset: text
    session_id, token = converse(server)
    log = server.log()
    assert_no_secret(log, token)
    short = session_id[:8]
    lines = log.splitlines()
    unmatched = [line for line in lines if not TEXT_LINE.match(line)]
    assert not unmatched, unmatched[:5]
    engine = [line for line in lines if TEXT_LINE.match(line).group(2) == "engine"]  # type: ignore[union-attr]
    assert engine and all(f"tutor_id={TUTOR}" in line for line in engine)
    failover = [line for line in lines if "engine lost; continued on" in line]
    assert failover and f"[session={short} tutor_id={TUTOR}]" in failover[0]
    assert "token.[REDACTED]" in log and "token=[REDACTED]" in log
