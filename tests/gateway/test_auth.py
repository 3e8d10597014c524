"""Management API keys, the token subprotocol and the Origin list, against real gateways.

In-process gateways (``gateway_factory``, uvicorn on 127.0.0.1) for the HTTP and WebSocket
behaviour; a real ``python -m tutor_gateway`` process at debug level for what reaches its log.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from tutor_gateway import client
from tutor_gateway.app import create_app
from tutor_gateway.auth import KeyFileError
from tutor_gateway.config import GatewaySettings
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.conftest import GatewayFactory
from tests.servers import RunningServer
from tests.support.waiting import wait_for

from ..abuse.conftest import GatewayStarter, ServerProcess, gateway_process  # noqa: F401
from .helpers import recv, say

KEY_A = "key-a-Jq3vX8mN2pL5rT9wY4zB6cD1fG7h"
KEY_B = "key-b-Vt6sR1nM8kJ3hG5fD2aS9qW4eZ7x"
WRONG = "key-w-Pz0oI9uY8tR7eW6qA5sD4fG3hJ2k"
MISSING = 'Bearer realm="tutor-gateway"'
INVALID = 'Bearer realm="tutor-gateway", error="invalid_token"'


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_refused(response: httpx.Response, challenge: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == challenge
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]


def create(server: RunningServer | ServerProcess, key: str, prefix: str = "/v1") -> dict[str, Any]:
    response = httpx.post(
        f"{server.http}{prefix}/sessions",
        json={"tutor_id": 1, "student_id": 1},
        headers=bearer(key),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def keyed(gateway_factory: GatewayFactory) -> RunningServer:
    return gateway_factory(management_api_keys=f"{KEY_A}, {KEY_B}")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/sessions"),
        ("POST", "/v1/sessions"),
        ("GET", "/mgmt/v1/sessions"),
        ("POST", "/mgmt/v1/sessions"),
        ("GET", "/v1/sessions/0b4d2f9e-0000-0000-0000-000000000000"),
        ("DELETE", "/mgmt/v1/sessions/0b4d2f9e-0000-0000-0000-000000000000"),
        ("GET", "/v1/not-a-route"),  # no probing of what exists
    ],
)
def test_every_management_call_needs_a_key(keyed: RunningServer, method: str, path: str) -> None:
    body = {"tutor_id": 1, "student_id": 1} if method == "POST" else None
    url = f"{keyed.http}{path}"
    assert_refused(httpx.request(method, url, json=body), MISSING)
    assert_refused(
        httpx.request(method, url, json=body, headers={"Authorization": "Basic eA=="}), MISSING
    )
    assert_refused(httpx.request(method, url, json=body, headers=bearer(WRONG)), INVALID)
    assert_refused(httpx.request(method, url, json=body, headers=bearer(KEY_A[:-1])), INVALID)
    assert_refused(httpx.request(method, url, json=body, headers=bearer(KEY_A.upper())), INVALID)


def test_a_refused_call_is_answered_before_its_body_is_read(keyed: RunningServer) -> None:
    url = f"{keyed.http}/v1/sessions"
    assert_refused(httpx.post(url, content=b"{not json"), MISSING)
    big = b"x" * (1024 * 1024)  # over MAX_REQUEST_BODY_BYTES (64 KiB): still 401, not 413
    assert_refused(
        httpx.post(url, content=big, headers={"content-type": "application/json"}), MISSING
    )
    assert httpx.get(f"{keyed.http}/v1/sessions", headers=bearer(KEY_A)).json()["total"] == 0


def test_each_of_two_keys_works_on_both_prefixes(keyed: RunningServer) -> None:
    for key in (KEY_A, KEY_B):
        for prefix in ("/v1", "/mgmt/v1"):
            session = create(keyed, key, prefix)
            url = f"{keyed.http}{prefix}/sessions/{session['session_id']}"
            assert httpx.get(url, headers=bearer(key)).status_code == 200
            listed = httpx.get(f"{keyed.http}{prefix}/sessions", headers=bearer(key))
            assert listed.status_code == 200 and listed.json()["total"] == 1
            assert httpx.delete(url, headers=bearer(key)).status_code == 204
    # The scheme's name is not case-sensitive (RFC 7235).
    listed = httpx.get(f"{keyed.http}/v1/sessions", headers={"Authorization": f"bearer {KEY_B}"})
    assert listed.status_code == 200


def test_without_keys_the_seed_api_is_open(gateway: RunningServer) -> None:
    session = httpx.post(f"{gateway.http}/v1/sessions", json={"tutor_id": 1, "student_id": 1})
    assert session.status_code == 201
    assert httpx.get(f"{gateway.http}/mgmt/v1/sessions").json()["total"] == 1
    # A key sent to an open gateway is ignored, not refused.
    assert httpx.get(f"{gateway.http}/v1/sessions", headers=bearer(WRONG)).status_code == 200


def test_health_stays_open_and_metrics_follow_the_setting(gateway_factory: GatewayFactory) -> None:
    default = gateway_factory(management_api_keys=KEY_A)
    for path in ("/health", "/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{default.http}{path}").status_code == 200, path
    locked = gateway_factory(management_api_keys=KEY_A, metrics_require_key=True)
    assert httpx.get(f"{locked.http}/health").json()["status"] == "healthy"
    assert_refused(httpx.get(f"{locked.http}/metrics"), MISSING)
    assert_refused(httpx.get(f"{locked.http}/metrics", headers=bearer(WRONG)), INVALID)
    metrics = httpx.get(f"{locked.http}/metrics", headers=bearer(KEY_A))
    assert metrics.status_code == 200 and "tutor_gateway" in metrics.text


def test_keys_rotate_through_the_file_without_a_restart(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    keys = tmp_path / "management-keys"
    keys.write_text(f"# the Web Server's key\n{KEY_A}\n")
    server = gateway_factory(management_api_keys_file=str(keys))
    url = f"{server.http}/v1/sessions"
    assert httpx.get(url, headers=bearer(KEY_A)).status_code == 200
    assert_refused(httpx.get(url, headers=bearer(KEY_B)), INVALID)

    # 1. Add the new key: both work.
    keys.write_text(f"{KEY_A}\n{KEY_B}\n")
    wait_for(lambda: httpx.get(url, headers=bearer(KEY_B)).status_code == 200, 5, "key B accepted")
    assert httpx.get(url, headers=bearer(KEY_A)).status_code == 200
    # 2. The Web Server switches; 3. remove the old key (replaced atomically, as a Secret volume).
    create(server, KEY_B)
    replacement = tmp_path / "management-keys.new"
    replacement.write_text(f"{KEY_B}\n")
    os.replace(replacement, keys)
    wait_for(lambda: httpx.get(url, headers=bearer(KEY_A)).status_code == 401, 5, "key A refused")
    assert_refused(httpx.get(url, headers=bearer(KEY_A)), INVALID)
    listed = httpx.get(url, headers=bearer(KEY_B))
    assert listed.status_code == 200 and listed.json()["total"] == 1  # same process, same state


def test_a_missing_key_file_stops_the_gateway_from_starting(tmp_path: Path) -> None:
    settings = GatewaySettings(  # type: ignore[call-arg]
        _env_file=None, management_api_keys_file=str(tmp_path / "absent"), state_dir=str(tmp_path)
    )
    with pytest.raises(KeyFileError, match="MANAGEMENT_API_KEYS_FILE"):
        create_app(settings)


def test_the_openapi_documents_the_bearer_scheme(keyed: RunningServer) -> None:
    spec = httpx.get(f"{keyed.http}/openapi.json").json()
    assert spec["components"]["securitySchemes"]["ManagementApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["ManagementApiKey"]["description"],
    }
    assert spec["paths"]["/v1/sessions"]["post"]["security"] == [{"ManagementApiKey": []}]


# --- The student WebSocket -------------------------------------------------------------------


def test_the_token_as_a_subprotocol_selects_tutor_v1_and_is_never_echoed(
    keyed: RunningServer,
) -> None:
    session = create(keyed, KEY_A)
    url = f"{keyed.ws}/ws/ws/{session['session_id']}"
    token = session["engine_token"]
    with connect(url, subprotocols=["tutor.v1", f"token.{token}"], open_timeout=30) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "tutor.v1"
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "tutor.v1"
        headers = "\n".join(f"{k}: {v}" for k, v in ws.response.headers.raw_items())
        assert token not in headers
        reply = say(ws, "hello through a subprotocol")
        assert reply["type"] == "text" and "hello through a subprotocol" in reply["content"]
    # The seed's ?token= still works, with or without the subprotocol offered.
    with connect(f"{url}?token={token}", open_timeout=30) as ws:
        assert ws.subprotocol is None
        assert say(ws, "seed client")["type"] == "text"
    with connect(f"{url}?token={token}", subprotocols=["tutor.v1"], open_timeout=30) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "tutor.v1"


def test_a_wrong_token_as_a_subprotocol_is_refused_with_4401(keyed: RunningServer) -> None:
    session = create(keyed, KEY_A)
    url = f"{keyed.ws}/ws/ws/{session['session_id']}"
    with connect(url, subprotocols=["tutor.v1", "token.not-the-token"], open_timeout=30) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "tutor.v1"
        assert recv(ws)["type"] == "error"
        with pytest.raises(ConnectionClosed) as closed:
            recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


def test_origins_outside_the_list_are_refused_with_403(gateway_factory: GatewayFactory) -> None:
    server = gateway_factory(allowed_origins="https://tutor.example.edu, http://localhost:8080")
    session = httpx.post(f"{server.http}/v1/sessions", json={"tutor_id": 1, "student_id": 1}).json()
    url = f"{server.ws}/ws/ws/{session['session_id']}?token={session['engine_token']}"
    for origin in ("https://evil.example", "null", "http://tutor.example.edu"):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, origin=origin, open_timeout=30)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
        assert json.loads(refused.value.response.body) == {"detail": "Origin not allowed"}
    for origin in ("https://tutor.example.edu", "http://localhost:8080", None):
        with connect(url, origin=origin, open_timeout=30) as ws:  # type: ignore[arg-type]
            assert say(ws, "allowed")["type"] == "text"
    # CORS for REST: the listed origins only.
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    allowed = httpx.options(
        f"{server.http}/v1/sessions", headers={"Origin": "https://tutor.example.edu", **preflight}
    )
    assert allowed.headers["access-control-allow-origin"] == "https://tutor.example.edu"
    refused_cors = httpx.options(
        f"{server.http}/v1/sessions", headers={"Origin": "https://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in refused_cors.headers


def test_any_origin_is_allowed_without_a_list(gateway: RunningServer) -> None:
    session = httpx.post(
        f"{gateway.http}/v1/sessions", json={"tutor_id": 1, "student_id": 1}
    ).json()
    url = f"{gateway.ws}/ws/ws/{session['session_id']}?token={session['engine_token']}"
    with connect(url, origin="https://anywhere.example", open_timeout=30) as ws:  # type: ignore[arg-type]
        assert say(ws, "hi")["type"] == "text"


# --- Startup warning, the bundled client, the logs -------------------------------------------


def test_an_open_api_beyond_loopback_warns_once_at_startup(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tutor_gateway.auth")
    gateway_factory(management_api_host="0.0.0.0")
    [warning] = [r for r in caplog.records if r.name == "tutor_gateway.auth"]
    assert warning.levelno == logging.WARNING
    assert "management API is open" in warning.getMessage()
    assert "MANAGEMENT_API_HOST=0.0.0.0" in warning.getMessage()
    caplog.clear()
    gateway_factory(management_api_host="127.0.0.1")
    gateway_factory(management_api_host="0.0.0.0", management_api_keys=KEY_A)
    assert [r for r in caplog.records if r.name == "tutor_gateway.auth"] == []


def test_the_bundled_client_sends_the_key(
    keyed: RunningServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--base-url", keyed.http, "--text", "hi", "--timeout", "60"]
    monkeypatch.delenv("MANAGEMENT_API_KEY", raising=False)
    assert client.main(argv) == 1
    assert "401" in capsys.readouterr().err
    assert client.main([*argv, "--api-key", KEY_A]) == 0
    monkeypatch.setenv("MANAGEMENT_API_KEY", KEY_B)
    assert client.main(argv) == 0
    out = capsys.readouterr().out
    assert KEY_A not in out and KEY_B not in out


def test_no_key_or_token_reaches_the_log(gateway_process: GatewayStarter) -> None:  # noqa: F811
    server = gateway_process(
        MANAGEMENT_API_KEYS=f"{KEY_A},{KEY_B}", METRICS_REQUIRE_KEY="true", LOG_LEVEL="debug"
    )
    url = f"{server.http}/v1/sessions"
    assert httpx.get(url, headers=bearer(WRONG), timeout=10).status_code == 401
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(f"{server.http}/metrics", headers=bearer(KEY_B), timeout=10).status_code == 200
    session = create(server, KEY_A)
    token = session["engine_token"]
    ws_url = f"{server.ws}/ws/ws/{session['session_id']}"
    with connect(
        ws_url,
        subprotocols=["tutor.v1", f"token.{token}"],  # type: ignore[list-item]
        additional_headers=bearer(KEY_A),  # a confused client sending its key here too
        open_timeout=30,
    ) as ws:
        assert say(ws, "hello")["type"] == "text"
    with connect(f"{ws_url}?token={token}", open_timeout=30) as ws:
        assert say(ws, "hello again")["type"] == "text"
    with connect(ws_url, subprotocols=["tutor.v1", f"token.{WRONG}"], open_timeout=30) as ws:  # type: ignore[list-item]
        assert recv(ws)["type"] == "error"
    deleted = httpx.delete(f"{url}/{session['session_id']}", headers=bearer(KEY_B), timeout=10)
    assert deleted.status_code == 204
    server.process.terminate()
    server.process.wait(timeout=20)
    log = server.log()
    # The log was written, at debug level, handshake headers included (redacted).
    assert '"GET /v1/sessions HTTP/1.1" 401' in log
    assert "sec-websocket-protocol: tutor.v1, token.[redacted]" in log.lower()
    assert "authorization: [redacted]" in log.lower()
    assert "x-engine-key: [redacted]" in log.lower()  # the engines' key, sent upstream
    for secret in (KEY_A, KEY_B, WRONG, token, KEY_A[:16], token[:16]):
        assert secret not in log
