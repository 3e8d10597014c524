"""The seed's REST API, over real HTTP, on both path prefixes."""

from __future__ import annotations

import json
import re
import socket
import uuid

import httpx
import pytest
from tutor_contract.knowledge import is_valid_kb_id
from tutor_gateway.api.errors import encodable
from tutor_gateway.config import GatewaySettings

from tests.servers import RunningServer

from .helpers import create_session

SEED_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")


def test_health_has_the_seeds_fields(gateway_factory) -> None:
    server = gateway_factory(max_sessions=7)
    create_session(server)
    body = httpx.get(f"{server.http}/health").json()
    assert body == {
        "status": "healthy",
        "service": "GPU Server Management API",
        "active_sessions": 1,
        "max_sessions": 7,
    }


@pytest.mark.parametrize("prefix", ["/v1", "/mgmt/v1"])
def test_session_lifecycle(gateway: RunningServer, prefix: str) -> None:
    created = httpx.post(
        f"{gateway.http}{prefix}/sessions",
        json={"tutor_id": 1, "student_id": 2, "kb_id": "test-kb"},
    )
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"session_id", "engine_url", "engine_token", "status"}
    session_id = body["session_id"]
    assert str(uuid.UUID(session_id)) == session_id
    assert body["engine_url"] == f"{gateway.ws}/ws/ws/{session_id}"
    assert body["status"] == "active"
    assert len(body["engine_token"]) >= 32

    got = httpx.get(f"{gateway.http}{prefix}/sessions/{session_id}")
    assert got.status_code == 200
    info = got.json()
    assert info["session_id"] == session_id
    assert (info["tutor_id"], info["student_id"], info["kb_id"]) == (1, 2, "test-kb")
    assert info["status"] == "active"
    assert SEED_TIME.match(info["created_at"]) and SEED_TIME.match(info["last_activity"])
    assert body["engine_token"] not in got.text

    listed = httpx.get(f"{gateway.http}{prefix}/sessions").json()
    assert listed["total"] == 1
    assert [s["session_id"] for s in listed["sessions"]] == [session_id]
    assert body["engine_token"] not in str(listed)

    deleted = httpx.delete(f"{gateway.http}{prefix}/sessions/{session_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert httpx.get(f"{gateway.http}{prefix}/sessions/{session_id}").status_code == 404
    assert httpx.delete(f"{gateway.http}{prefix}/sessions/{session_id}").status_code == 404
    assert httpx.get(f"{gateway.http}{prefix}/sessions").json() == {"total": 0, "sessions": []}


def test_both_prefixes_share_one_store(gateway: RunningServer) -> None:
    session = create_session(gateway)
    got = httpx.get(f"{gateway.http}/mgmt/v1/sessions/{session['session_id']}")
    assert got.status_code == 200


def test_engine_url_defaults_to_the_seeds_unified_url() -> None:
    settings = GatewaySettings(_env_file=None)
    assert settings.engine_url("abc") == "ws://localhost:9000/ws/ws/abc"
    assert GatewaySettings(_env_file=None, management_api_port=9100).engine_url("x") == (
        "ws://localhost:9100/ws/ws/x"
    )


def test_engine_url_uses_the_public_websocket_url(gateway_factory) -> None:
    server = gateway_factory(websocket_url="wss://tutor.example.edu/ws/")
    session = create_session(server)
    assert session["engine_url"] == f"wss://tutor.example.edu/ws/ws/{session['session_id']}"


def test_unknown_session_is_404_with_detail(gateway: RunningServer) -> None:
    for method in ("GET", "DELETE"):
        response = httpx.request(method, f"{gateway.http}/v1/sessions/{uuid.uuid4()}")
        assert response.status_code == 404
        assert response.json() == {"detail": "Session not found"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"student_id": 1}, "tutor_id"),
        ({"tutor_id": 1}, "student_id"),
        ({"tutor_id": "one", "student_id": 1}, "tutor_id"),
        ({"tutor_id": -1, "student_id": 1}, "tutor_id"),
        ({"tutor_id": 1, "student_id": 1, "kb_id": ""}, "kb_id"),
        ({"tutor_id": 1, "student_id": 1, "kb_id": "k" * 300}, "kb_id"),
    ],
)
def test_invalid_body_is_422_naming_the_field(gateway: RunningServer, body, field) -> None:
    response = httpx.post(f"{gateway.http}/v1/sessions", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert any(error["loc"][-1] == field for error in detail), detail


def test_non_json_body_is_422(gateway: RunningServer) -> None:
    response = httpx.post(
        f"{gateway.http}/v1/sessions",
        content=b"tutor_id=1",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"]


def test_session_limit_is_503_then_frees_up(gateway_factory) -> None:
    server = gateway_factory(max_sessions=3)
    sessions = [create_session(server, student_id=i) for i in range(3)]
    refused = httpx.post(f"{server.http}/v1/sessions", json={"tutor_id": 1, "student_id": 9})
    assert refused.status_code == 503
    assert refused.json() == {"detail": "Maximum number of sessions reached (3)"}
    assert httpx.get(f"{server.http}/health").json()["active_sessions"] == 3
    httpx.delete(f"{server.http}/v1/sessions/{sessions[0]['session_id']}")
    assert (
        httpx.post(f"{server.http}/v1/sessions", json={"tutor_id": 1, "student_id": 9}).status_code
        == 201
    )


def test_swagger_and_openapi(gateway: RunningServer) -> None:
    docs = httpx.get(f"{gateway.http}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = httpx.get(f"{gateway.http}/openapi.json").json()["paths"]
    assert {"post", "get"} <= set(paths["/v1/sessions"])
    assert {"get", "delete"} <= set(paths["/v1/sessions/{session_id}"])
    assert "/health" in paths
    # /mgmt/v1 is served (test_session_lifecycle) but documented once, as an alias.
    assert not any(path.startswith("/mgmt/") for path in paths)


def test_metrics_count_sessions(gateway: RunningServer) -> None:
    create_session(gateway)
    text = httpx.get(f"{gateway.http}/metrics").text
    assert "tutor_gateway_sessions_created_total 1.0" in text


# Bodies JSON cannot carry, kb_id, body size.


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"tutor_id": NaN, "student_id": 1}', "tutor_id"),
        (b'{"tutor_id": 1, "student_id": Infinity}', "student_id"),
        (b'{"tutor_id": -Infinity, "student_id": 1}', "tutor_id"),
        (b'{"tutor_id": 1e999, "student_id": 1}', "tutor_id"),
        (b'{"tutor_id": 1, "student_id": 1, "kb_id": "\\ud800"}', "kb_id"),
        (b'{"tutor_id": 1, "student_id": 1, "kb_id": "\xed\xa0\x80"}', "kb_id"),
        (b'{"tutor_id": 1, "student_id": 1, "note": [NaN]}', 0),
        (b'{"tutor_id": 1, "student_id": 1, "\\udc80": 1}', "\\udc80"),
    ],
    ids=["nan", "inf", "-inf", "overflow", "surrogate", "surrogate-bytes", "extra", "key"],
)
def test_values_json_cannot_carry_are_422_naming_the_field(
    gateway: RunningServer, body: bytes, field: str | int
) -> None:
    response = httpx.post(
        f"{gateway.http}/v1/sessions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(error["loc"][-1] == field for error in detail), detail
    assert httpx.get(f"{gateway.http}/v1/sessions").json()["total"] == 0


@pytest.mark.parametrize(
    "body",
    [b"[" * 5000, b'{"tutor_id": ' + b"1" * 5000 + b', "student_id": 1}', b'{"tutor_id": "\xff"}'],
    ids=["deep", "long-integer", "not-utf8"],
)
def test_bodies_the_parser_fails_on_are_422(gateway: RunningServer, body: bytes) -> None:
    response = httpx.post(
        f"{gateway.http}/v1/sessions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_any_validation_error_renders_whatever_it_echoes(gateway: RunningServer) -> None:
    # Not JSON at all: pydantic echoes the raw bytes, which are not UTF-8.
    response = httpx.post(
        f"{gateway.http}/v1/sessions",
        content=b"\xff\xfe\xed\xa0\x80",
        headers={"content-type": "text/plain"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]
    # Nested deeper than anyone reads: the echo is cut, the 422 stays small.
    deep = b'{"tutor_id": ' + b"[" * 900 + b"]" * 900 + b', "student_id": 1}'
    response = httpx.post(
        f"{gateway.http}/v1/sessions", content=deep, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and len(response.content) < 2000


def test_the_422_encoder_takes_anything() -> None:
    errors = [
        {"loc": ("body", "\udc80"), "input": [float("nan"), float("inf"), -float("inf")]},
        {"loc": ("body",), "input": b"\xff", "ctx": {"error": ValueError("bad \ud800")}},
        {"loc": ("body",), "input": {"a": {"b": {"c": object()}}}},
    ]
    encoded = json.dumps(encodable(errors), allow_nan=False).encode("utf-8")
    assert b'"NaN", "Infinity", "-Infinity"' in encoded and b"\\\\udc80" in encoded


def test_kb_id_follows_the_engines_rule(gateway: RunningServer) -> None:
    refused = ["kb\n", "kb\r\n", "a..b", "..", ".hidden", "-x", "a/b", "a b", "ü", "k" * 129]
    taken = ["math-101", "A.b_c", "0", "k" * 128]
    for kb_id in refused:
        assert not is_valid_kb_id(kb_id)
        response = httpx.post(
            f"{gateway.http}/v1/sessions", json={"tutor_id": 1, "student_id": 1, "kb_id": kb_id}
        )
        assert response.status_code == 422, kb_id
        detail = response.json()["detail"]
        assert [error["loc"] for error in detail] == [["body", "kb_id"]], detail
    for student, kb_id in enumerate(taken):  # one student each: MAX_SESSIONS_PER_STUDENT
        assert is_valid_kb_id(kb_id)
        assert create_session(gateway, student_id=student, kb_id=kb_id)["status"] == "active"


def head_then_response(server: RunningServer, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send a request head (and a partial body), read one response without sending more."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + body)
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        status_and_headers, _, content = received.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", status_and_headers)[1])
        while len(content) < length:
            content += sock.recv(65536)
    return int(status_and_headers.split(b" ")[1]), content


def test_body_over_the_limit_is_413_as_it_streams(gateway_factory) -> None:
    server = gateway_factory(max_request_body_bytes=4096)
    url = f"{server.http}/v1/sessions"
    as_json = {"content-type": "application/json"}
    fits = json.dumps({"tutor_id": 1, "student_id": 1}).encode().ljust(4096)
    assert httpx.post(url, content=fits, headers=as_json).status_code == 201
    too_large = {"detail": "Request body larger than 4096 bytes"}
    response = httpx.post(url, content=fits + b" ", headers=as_json)
    assert (response.status_code, response.json()) == (413, too_large)
    response = httpx.post(url, content=iter([fits, b" "]), headers=as_json)  # chunked
    assert (response.status_code, response.json()) == (413, too_large)
    # A Content-Length over the limit is answered before any of the body is sent.
    head = b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    status, content = head_then_response(server, head + b"Content-Length: 1000000000\r\n\r\n")
    assert (status, json.loads(content)) == (413, too_large)
    # A chunked body is refused once past the limit, its end never sent.
    chunk = b"%x\r\n%s\r\n" % (1024, b" " * 1024)
    status, content = head_then_response(
        server, head + b"Transfer-Encoding: chunked\r\n\r\n", chunk * 5
    )
    assert (status, json.loads(content)) == (413, too_large)
    assert httpx.get(f"{server.http}/v1/sessions").json()["total"] == 1
