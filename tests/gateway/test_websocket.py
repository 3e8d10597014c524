"""The seed's WebSocket protocol through the gateway, with its error paths."""

from __future__ import annotations

import base64
import io
import json
import re
import uuid
import wave

import httpx
import pytest
from tutor_engine.backends.mock import make_wav
from tutor_gateway.engines import EngineEndpoint
from tutor_gateway.sessions import Session, StoreUnavailable
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.servers import RunningServer

from .helpers import create_session, open_ws, recv, say, send_audio

SEED_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")


def closed_with(ws, code: int) -> str:
    """Read until the server closes; assert the close code; return the last error text."""
    error = None
    with pytest.raises(ConnectionClosed) as info:
        while True:
            message = recv(ws, timeout=30)
            assert message["type"] == "error", message
            assert SEED_TIME.match(message["timestamp"])
            error = message["content"]
    assert info.value.rcvd is not None and info.value.rcvd.code == code
    assert error, "an error message precedes the close"
    return error


@pytest.mark.parametrize("path", ["/ws/ws", "/ws"])
def test_text_gets_a_text_reply(gateway: RunningServer, path: str) -> None:
    session = create_session(gateway, tutor_id=4)
    with open_ws(gateway, session, path) as ws:
        reply = say(ws, "你好，请问什么是Python？")
    assert set(reply) == {"type", "content", "role", "timestamp"}
    assert reply["type"] == "text" and reply["role"] == "assistant"
    assert "你好，请问什么是Python？" in reply["content"] and "Tutor 4" in reply["content"]
    assert SEED_TIME.match(reply["timestamp"])


def test_audio_gets_transcription_text_and_audio(gateway: RunningServer) -> None:
    session = create_session(gateway)
    with open_ws(gateway, session) as ws:
        send_audio(ws, make_wav("what is a prime number"))
        transcription, text, audio = recv(ws), recv(ws), recv(ws)
    assert transcription["type"] == "transcription" and transcription["role"] == "user"
    assert transcription["content"] == "what is a prime number"
    assert text["type"] == "text" and "what is a prime number" in text["content"]
    assert audio["type"] == "audio" and audio["role"] == "assistant"
    assert audio["content"] == text["content"]
    assert set(audio) == {"type", "content", "data", "role", "timestamp"}
    with wave.open(io.BytesIO(base64.b64decode(audio["data"]))) as wav:
        assert wav.getnframes() > 0 and wav.getframerate() > 0


def test_longer_reply_gives_longer_audio(gateway: RunningServer) -> None:
    session = create_session(gateway)
    durations = []
    with open_ws(gateway, session) as ws:
        for words in ("hi", "tell me everything about the french revolution please"):
            send_audio(ws, make_wav(words))
            audio = [recv(ws) for _ in range(3)][-1]
            with wave.open(io.BytesIO(base64.b64decode(audio["data"]))) as wav:
                durations.append(wav.getnframes() / wav.getframerate())
    assert durations[1] > durations[0]


@pytest.mark.parametrize("token", ["", "wrong-token"])
def test_bad_token_is_refused_with_4401(gateway: RunningServer, token: str) -> None:
    session = create_session(gateway)
    with open_ws(gateway, session, token=token) as ws:
        assert "token" in closed_with(ws, 4401).lower()


def test_missing_token_parameter_is_refused(gateway: RunningServer) -> None:
    session = create_session(gateway)
    with connect(f"{gateway.ws}/ws/ws/{session['session_id']}") as ws:
        closed_with(ws, 4401)


def test_token_of_another_session_is_refused(gateway: RunningServer) -> None:
    first, second = create_session(gateway), create_session(gateway)
    with open_ws(gateway, first, token=second["engine_token"]) as ws:
        closed_with(ws, 4401)


def test_unknown_session_is_refused_with_4404(gateway: RunningServer) -> None:
    fake = {"session_id": str(uuid.uuid4()), "engine_token": "x"}
    with open_ws(gateway, fake) as ws:
        assert "not found" in closed_with(ws, 4404).lower()


def test_a_failing_session_store_refuses_the_socket_with_an_error(
    gateway: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = create_session(gateway)
    state = gateway.app.state.gateway

    async def unavailable(session_id: str) -> Session | None:
        raise StoreUnavailable("session database is closed")

    for method in ("get", "touch"):  # the lookup, then the touch of a session found
        with monkeypatch.context() as patch:
            patch.setattr(state.store, method, unavailable)
            with open_ws(gateway, session) as ws:
                assert "store is unavailable" in closed_with(ws, 1013)
    assert state.metrics.ws_rejected.labels("store_unavailable")._value.get() == 2


def test_deleted_session_closes_its_socket_and_refuses_reconnects(gateway: RunningServer) -> None:
    session = create_session(gateway)
    with open_ws(gateway, session) as ws:
        say(ws, "hello")
        assert (
            httpx.delete(f"{gateway.http}/v1/sessions/{session['session_id']}").status_code == 204
        )
        assert "ended" in closed_with(ws, 4410).lower()
    with open_ws(gateway, session) as ws:
        closed_with(ws, 4410)


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        ("this is not json", "invalid json"),
        ("[1, 2]", "json object"),
        (json.dumps({"content": "hi"}), "no 'type'"),
        (json.dumps({"type": "video", "data": "AAAA"}), "unknown message type"),
        (json.dumps({"type": "text"}), "content"),
        (json.dumps({"type": "text", "content": "   "}), "content"),
        (json.dumps({"type": "audio"}), "data"),
        (json.dumps({"type": "audio", "data": "***not base64***"}), "base64"),
        (json.dumps({"type": "audio", "data": base64.b64encode(b"garbage").decode()}), "wav"),
    ],
)
def test_bad_messages_get_an_error_and_the_connection_stays_usable(
    gateway: RunningServer, frame: str, needle: str
) -> None:
    session = create_session(gateway)
    with open_ws(gateway, session) as ws:
        ws.send(frame)
        error = recv(ws)
        assert error["type"] == "error" and needle in error["content"].lower(), error
        assert SEED_TIME.match(error["timestamp"])
        assert say(ws, "still there?")["type"] == "text"


def test_oversized_frame_gets_an_error_and_the_connection_stays_usable(gateway_factory) -> None:
    server = gateway_factory(max_message_bytes=64 * 1024)
    session = create_session(server)
    with open_ws(server, session) as ws:
        ws.send(json.dumps({"type": "text", "content": "x" * 100_000}))
        error = recv(ws)
        assert error["type"] == "error" and "too large" in error["content"].lower()
        assert say(ws, "small one")["type"] == "text"


def test_binary_frame_is_answered_not_fatal(gateway: RunningServer) -> None:
    session = create_session(gateway)
    with open_ws(gateway, session) as ws:
        ws.send(b"\x00\x01binary")
        assert recv(ws)["type"] == "error"
        assert say(ws, "ok")["type"] == "text"


def test_messages_sent_before_the_engine_is_ready_are_answered_in_order(
    gateway: RunningServer,
) -> None:
    session = create_session(gateway, tutor_id=11)
    with open_ws(gateway, session) as ws:
        for word in ("one", "two", "three"):
            ws.send(json.dumps({"type": "text", "content": word}))
        replies = [recv(ws)["content"] for _ in range(3)]
    assert [r.split("heard: ")[1].split(".")[0] for r in replies] == ["one", "two", "three"]


def test_streaming_opt_in_passes_through_the_gateway(gateway: RunningServer) -> None:
    session = create_session(gateway)
    url = f"{gateway.ws}/ws/ws/{session['session_id']}?token={session['engine_token']}&stream=1"
    with connect(url, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "text", "content": "stream please"}))
        events = []
        while not events or events[-1]["type"] != "text":
            events.append(recv(ws))
    assert {e["type"] for e in events[:-1]} == {"text_delta"}
    assert events[-1]["final"] is True
    assert "".join(e["content"] for e in events[:-1]).strip() == events[-1]["content"]


def test_engine_url_keeps_the_token_back_and_the_sessions_own_kb() -> None:
    endpoint = EngineEndpoint("http://127.0.0.1:8000", "key")
    session = Session("sid", 1, 1, "kb-1", "h", "active", 0.0, 0.0)
    url = endpoint.websocket_url(session, {"token": "secret", "stream": "1", "kb_id": "other"})
    assert url == "ws://127.0.0.1:8000/ws/sid?stream=1&kb_id=kb-1"
    plain = Session("sid", 1, 1, None, "h", "active", 0.0, 0.0)
    assert endpoint.websocket_url(plain) == "ws://127.0.0.1:8000/ws/sid"
