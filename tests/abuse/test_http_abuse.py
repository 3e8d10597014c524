"""HTTP and WebSocket transport attacks on a real ``python -m tutor_gateway`` process.

Each attack is measured from outside: the gateway's peak resident memory (the kernel's high
water mark, so no sampling can miss a spike) rises by far less than the attack's size, every
client gets its documented answer, a well-behaved session of the same tutor is still answered,
and the log holds neither a traceback nor a session token.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close
from websockets.http11 import Response
from websockets.uri import parse_uri

from .conftest import ServerProcess, connect_session, create_session, recv_json, round_trips

MiB = 1 << 20

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="peak RSS is read from /proc"
)


def peak_rss_mb(server: ServerProcess) -> float:
    """The process's peak resident memory (VmHWM) since it started or since :func:`watch`."""
    for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def watch(server: ServerProcess) -> Callable[[], float]:
    """Start measuring: returns how many MiB the peak RSS has since risen above the RSS now.

    The kernel's peak is reset to the current RSS first (``clear_refs``), so a spike of any
    length counts; where that is not allowed, the rise of the peak itself is measured.
    """
    try:
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")
    except OSError:
        pass
    start = peak_rss_mb(server)
    return lambda: peak_rss_mb(server) - start


def clean_log(server: ServerProcess, *secrets: str) -> None:
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    for secret in secrets:
        assert secret not in log


def raw_exchange(server: ServerProcess, request: bytes) -> tuple[int, Any]:
    """Send ``request`` whole on a fresh socket and read the answer to EOF: status, JSON."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_a_64_mb_rest_body_is_413_and_never_read(gateway_process) -> None:
    server = gateway_process()
    create_session(server)
    grew = watch(server)
    url = f"{server.http}/v1/sessions"
    as_json = {"content-type": "application/json"}
    body = b" " * (64 * MiB)
    response = httpx.post(url, content=body, headers=as_json, timeout=60)
    assert response.status_code == 413 and response.json()["detail"]

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield body[:MiB]

    response = httpx.post(url, content=chunks(), headers=as_json, timeout=60)
    assert response.status_code == 413 and response.json()["detail"]
    assert grew() < 16, f"gateway peak RSS grew {grew():.1f} MiB for 64 MiB bodies"
    assert httpx.get(f"{server.http}/health").json()["active_sessions"] == 1
    clean_log(server)


@pytest.mark.parametrize("body", [b"NaN", b"Infinity", b"-Infinity", b'"\\ud800"', b"1e999"])
def test_values_json_cannot_carry_are_422(gateway_process, body: bytes) -> None:
    server = gateway_process()
    for field in (b"tutor_id", b"kb_id", b"extra"):
        fields = {b"tutor_id": b"1", b"student_id": b"1", field: body}
        payload = b"{" + b", ".join(b'"%s": %s' % item for item in fields.items()) + b"}"
        response = httpx.post(
            f"{server.http}/v1/sessions",
            content=payload,
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 422, (payload, response.text)
        assert response.json()["detail"]
    assert httpx.get(f"{server.http}/health").json()["active_sessions"] == 0
    clean_log(server)


def test_huge_urls_and_headers_are_answered_414_431(gateway_process) -> None:
    server = gateway_process()
    session = create_session(server)
    token = session["engine_token"]
    grew = watch(server)
    pad = b"a" * (16 * MiB)
    upgrade = (
        b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    target = f"/ws/ws/{session['session_id']}?token={token}&pad=".encode()
    attacks = [
        (b"GET " + target + pad + b" HTTP/1.1\r\n" + upgrade + b"\r\n", 414),
        (b"GET " + target + b"b" * 9000 + b" HTTP/1.1\r\n" + upgrade + b"\r\n", 414),
        (b"GET " + target + b" HTTP/1.1\r\n" + upgrade + b"X-Pad: " + pad + b"\r\n\r\n", 431),
        (b"GET /health?pad=" + pad + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + pad + b"\r\n\r\n", 431),
    ]
    for request, status in attacks:
        answer = raw_exchange(server, request)
        assert answer[0] == status and answer[1]["detail"], answer
    assert grew() < 8, f"gateway peak RSS grew {grew():.1f} MiB for 16 MiB heads"
    with connect_session(server, session) as ws:
        assert round_trips(ws, 1)
    clean_log(server, token)


def test_deflate_bombs_close_1009_with_bounded_memory(gateway_process) -> None:
    server = gateway_process(MAX_MESSAGE_BYTES=MiB, WS_MAX_FRAME_BYTES=2 * MiB)
    victim = create_session(server, tutor_id=1, student_id=1)
    attacker = create_session(server, tutor_id=1, student_id=2)
    with connect_session(server, victim) as calm:
        round_trips(calm, 3)
        engines = server.children()
        with connect_session(server, attacker) as ws:
            assert ws.protocol.extensions, "permessage-deflate was negotiated"
            # Between MAX_MESSAGE_BYTES and WS_MAX_FRAME_BYTES: an error, the socket stays.
            ws.send(" " * (MiB + MiB // 2))
            assert recv_json(ws)["type"] == "error"
            assert round_trips(ws, 1)
        grew = watch(server)
        # Over WS_MAX_FRAME_BYTES, 3 MiB to 64 MiB inflated from 3 to 64 KB on the wire; each
        # bomb inflates to the limit at most, and none of it outlives its connection.
        for size in (3 * MiB, *[64 * MiB] * 9):
            with connect_session(server, attacker) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    ws.send(bytes(size))
                    ws.recv(timeout=60)
            assert isinstance(closed.value.rcvd, Close), closed.value
            assert closed.value.rcvd.code == 1009
        assert grew() < 12, f"gateway peak RSS grew {grew():.1f} MiB from 10 deflate bombs"
        assert round_trips(calm, 3)
        assert server.children() == engines
    clean_log(server, victim["engine_token"], attacker["engine_token"])


def test_invalid_utf8_text_is_answered_and_the_connection_stays(gateway_process) -> None:
    server = gateway_process()
    session = create_session(server)
    path = f"/ws/ws/{session['session_id']}?token={session['engine_token']}"
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        client = ClientProtocol(parse_uri(f"{server.ws}{path}"), max_size=None)
        client.send_request(client.connect())
        events: list[Any] = []

        def flush() -> None:
            for data in client.data_to_send():
                if data:
                    sock.sendall(data)

        def next_event() -> Any:
            while not events:
                data = sock.recv(65536)
                assert data, "the gateway closed the connection"
                client.receive_data(data)
                events.extend(client.events_received())
            return events.pop(0)

        flush()
        response = next_event()
        assert isinstance(response, Response) and response.status_code == 101
        for text in (b"\xff\xfe", b'{"type": "text", "content": "\xc3"}'):
            client.send_text(text)
            flush()
            assert json.loads(next_event().data)["type"] == "error"
        client.send_text(json.dumps({"type": "text", "content": "still here?"}).encode())
        flush()
        assert json.loads(next_event().data)["type"] == "text"
    assert "Invalid UTF-8" not in server.log()
    clean_log(server, session["engine_token"])
