"""tutor-client.js in headless Chromium against real servers: the gateway with real speech
models, the gateway with mock engines, and a scripted WebSocket server for what no real server
says (unknown message types, every close code)."""

from __future__ import annotations

import base64
import io
import json
import sys
import wave
from typing import Any

import pytest
from tutor_gateway import frames

from tests.support.processes import ServerProcess

from .conftest import ScriptedServer, free_port, open_page, run_js, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SERVER_TYPES = {
    "text",
    "transcription",
    "audio",
    "error",
    "options",
    "text_delta",
    "audio_chunk",
    "interrupted",
}
RECONNECTS = {1001, 1006, 1012, 1013, 4503}
LIFECYCLE = ["state", "reconnecting", "engine"]


def server_messages(events: list[dict]) -> list[dict]:
    """Each ``message`` event, checked to be followed by its typed event with the same detail."""
    found = []
    for i, event in enumerate(events):
        if event["name"] != "message":
            continue
        kind = event["detail"]["type"]
        if kind in SERVER_TYPES:
            assert events[i + 1] == {"name": kind, "detail": event["detail"]}, events[i : i + 2]
        found.append(event["detail"])
    return found


def states(events: list[dict]) -> list[dict]:
    return [e["detail"] for e in events if e["name"] == "state"]


def silent_wav() -> str:
    """0.2 s of silence as base64 WAV."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\0\0" * 3200)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def mock_page(page: Any, gateway_factory) -> tuple[Any, Any]:
    """The browser on a gateway with mock engines (fast), ready to import the module."""
    server = gateway_factory()
    open_page(page, f"{server.http}/demo")
    return page, server


# Real speech models (the embedded default).


def test_connect_send_text_and_typed_events(page: Any, speech_gateway: ServerProcess) -> None:
    open_page(page, f"{speech_gateway.http}/demo")
    result = run_js(
        page,
        """
        const session = await createSession(22);
        const client = new tc.TutorClient({
          engineUrl: session.engine_url, engineToken: session.engine_token, stream: false,
        });
        const events = record(client);
        let early = null;
        try { client.sendText("too early"); } catch (error) { early = error.message; }
        await client.connect();
        client.sendText("hello tutor");
        await until(() => events.some((e) => e.name === "text"), 240000, "a text reply");
        client.close();
        await until(() => client.state === "closed", 10000, "the close");
        return { early, events: summary(events) };
        """,
    )
    events = result["events"]
    assert "not connected" in result["early"]
    assert [s["state"] for s in states(events)] == ["connecting", "open", "closed"]
    assert states(events)[-1]["code"] == 1000 and not states(events)[-1]["gaveUp"]
    engine = [e["detail"]["state"] for e in events if e["name"] == "engine"]
    assert engine[:2] == ["waiting", "ready"]
    messages = server_messages(events)
    assert [m["type"] for m in messages] == ["options", "text"]
    assert messages[0]["stream"] is False
    assert "hello tutor" in messages[1]["content"] and messages[1]["role"] == "assistant"
    assert all("timestamp" in m for m in messages)
    latency = [e["detail"] for e in events if e["name"] == "latency"]
    assert [d["kind"] for d in latency] == ["text"] and latency[0]["ms"] >= 0
    assert not [e for e in events if e["name"] == "reconnecting"]


def test_every_server_message_is_a_typed_event(
    page: Any, speech_gateway: ServerProcess, question_b64: str
) -> None:
    open_page(page, f"{speech_gateway.http}/demo")
    result = run_js(
        page,
        """
        const wav = tc.fromBase64(args[0]);
        const open = async (stream) => {
          const session = await createSession(22);
          const client = new tc.TutorClient({
            engineUrl: session.engine_url, engineToken: session.engine_token, stream,
          });
          const events = record(client);
          await client.connect();
          return [client, events];
        };
        const has = (events, test) => events.some(test);
        const ended = (events, n) =>
          events.filter((e) => e.name === "playback" && e.detail.state === "ended").length >= n;

        // The seed's messages: transcription, text, a whole-reply audio; error.
        const [plain, plainEvents] = await open(false);
        await plain.sendAudio(wav);
        await until(() => ended(plainEvents, 1), 240000, "the whole reply to play");
        plain.send({ type: "bogus" });
        await until(() => has(plainEvents, (e) => e.name === "error"), 60000, "an error");
        plain.close();

        // Streaming: deltas, audio per sentence, a final text; then barge-in.
        const [live, liveEvents] = await open(true);
        await live.sendAudio(wav);
        await until(() => ended(liveEvents, 1), 240000, "the streamed reply to play");
        let second = false;
        const off = live.on("transcription", () => {
          if (!second) return;
          off();
          live.sendText("And what about Spain?");
        });
        second = true;
        await live.sendAudio(wav);
        await until(() => has(liveEvents, (e) => e.name === "interrupted"), 240000, "interrupted");
        await until(
          () => has(liveEvents, (e) => e.name === "text" && e.detail.content.includes("Spain")),
          240000,
          "the reply to the typed question",
        );
        live.close();
        return { plain: summary(plainEvents), live: summary(liveEvents) };
        """,
        question_b64,
    )
    plain, live = result["plain"], result["live"]
    plain_messages = server_messages(plain)
    live_messages = server_messages(live)
    seen = {m["type"] for m in plain_messages + live_messages}
    assert seen == SERVER_TYPES

    kinds = [m["type"] for m in plain_messages]
    assert kinds == ["options", "transcription", "text", "audio", "error"], kinds
    assert "capital" in plain_messages[1]["content"].lower()
    assert "Unknown message type" in plain_messages[-1]["content"]
    playback = [e["detail"]["state"] for e in plain if e["name"] == "playback"]
    assert playback == ["playing", "ended"]
    assert [e["detail"]["kind"] for e in plain if e["name"] == "latency"] == ["speech"]

    first_reply = live_messages[1]["reply_id"]
    assert live_messages[1]["type"] == "transcription"
    chunks = [
        m["index"]
        for m in live_messages
        if m["type"] == "audio_chunk" and m["reply_id"] == first_reply
    ]
    final = next(m for m in live_messages if m["type"] == "text" and m.get("final"))
    assert final["reply_id"] == first_reply and final["audio_chunks"] == len(chunks) > 0
    assert chunks == list(range(len(chunks)))
    deltas = "".join(
        m["content"]
        for m in live_messages
        if m["type"] == "text_delta" and m["reply_id"] == first_reply
    )
    assert deltas.strip() == final["content"]
    assert {"state": "ended", "replyId": f"1:{first_reply}"} in [
        e["detail"] for e in live if e["name"] == "playback"
    ]
    # The cut reply: nothing of it plays once the student has sent the typed question.
    cut = next(m for m in live_messages if m["type"] == "interrupted")["reply_id"]
    sent_at = next(
        i
        for i, e in enumerate(live)
        if e["name"] == "transcription" and e["detail"]["reply_id"] == cut
    )
    assert {"state": "playing", "replyId": f"1:{cut}"} not in [
        e["detail"] for e in live[sent_at:] if e["name"] == "playback"
    ]


# Scripted server: what real servers do not say yet.


def test_unknown_message_types_are_surfaced_as_typed_events(
    mock_page: tuple[Any, Any], scripted: ScriptedServer
) -> None:
    page, _ = mock_page
    said = [
        {"type": "status", "state": "loading", "content": "Loading the tutor's models"},
        {"type": "whiteboard", "strokes": [1, 2]},
        {"type": "state", "x": 1},
        "not json",
    ]
    url = scripted.say("unknown", said)
    result = run_js(
        page,
        """
        const client = new tc.TutorClient({
          engineUrl: args[0], engineToken: "t", reconnect: false,
        });
        const events = record(client);
        await client.connect();
        await until(() => events.some((e) => e.name === "invalid"), 30000, "the scripted frames");
        const engine = client.engineState;
        client.close();
        return { engine, events: summary(events) };
        """,
        url,
    )
    events = result["events"]
    by_name = {e["name"]: e["detail"] for e in events}
    assert by_name["status"] == said[0]
    assert by_name["whiteboard"] == said[1]
    assert [e["detail"] for e in events if e["name"] == "message"] == said[:3]
    assert all("previous" in d for d in states(events)), "a server 'state' is only a message"
    assert by_name["invalid"] == {"raw": "not json"}
    assert result["engine"] == "waiting", "unknown types say nothing about the engine"
    assert json.loads(scripted.received["/say/unknown"][0]) == {"type": "options", "stream": True}


def test_undecodable_reply_audio_is_reported_and_later_audio_still_plays(
    mock_page: tuple[Any, Any], scripted: ScriptedServer
) -> None:
    page, _ = mock_page
    said = [
        {"type": "audio", "content": "bad", "data": base64.b64encode(b"not audio").decode()},
        {"type": "audio", "content": "good", "data": silent_wav()},
    ]
    events = run_js(
        page,
        """
        const client = new tc.TutorClient({ engineUrl: args[0], engineToken: "t", stream: false });
        const events = record(client);
        await client.connect();
        await until(() => events.some((e) => e.name === "playback" && e.detail.state === "ended"),
                    30000, "the good audio to play");
        client.close();
        return summary(events.filter((e) => ["invalid", "playback"].includes(e.name)));
        """,
        scripted.say("audio", said),
    )
    assert [(e["name"], e["detail"].get("state")) for e in events] == [
        ("invalid", None),
        ("playback", "playing"),
        ("playback", "ended"),
    ]
    assert "could not be decoded" in events[0]["detail"]["raw"]


@pytest.mark.parametrize("barge_in", [False, True])
def test_reply_ids_start_again_after_the_gateway_moves_the_session(
    mock_page: tuple[Any, Any], scripted: ScriptedServer, barge_in: bool
) -> None:
    """The gateway's ``interrupted`` (no ``reply_id``): what came of the cut reply plays out
    (or nothing, after a barge-in), and the next engine's reply 1 plays although the first
    engine's reply 1 was silenced."""
    page, _ = mock_page
    wav = silent_wav()
    chunk = {"type": "audio_chunk", "reply_id": 1, "index": 0, "content": "Hi.", "data": wav}
    said = [
        {"type": "text_delta", "reply_id": 1, "content": "Hi. "},
        chunk,
        {"type": "interrupted", "role": "assistant", "reason": "engine restarted"},
        {"type": "text_delta", "reply_id": 1, "content": "Hi. "},
        chunk,
        {"type": "text", "reply_id": 1, "content": "Hi.", "final": True, "audio_chunks": 1},
    ]
    events = run_js(
        page,
        """
        const client = new tc.TutorClient({ engineUrl: args[0], engineToken: "t" });
        const events = record(client);
        let barged = !args[1];
        client.on("audio_chunk", () => {
          if (!barged) client.stopPlayback();  // the student speaks as the first chunk arrives
          barged = true;
        });
        await client.connect();
        await until(() => events.some((e) => e.name === "playback" && e.detail.replyId === "2:1"
                                              && e.detail.state === "ended"), 30000, "reply 2:1");
        client.close();
        return summary(events.filter((e) => e.name === "playback"));
        """,
        scripted.say("moved", said),
        barge_in,
    )
    by_reply: dict[str, list[str]] = {}
    for event in events:
        by_reply.setdefault(event["detail"]["replyId"], []).append(event["detail"]["state"])
    second = {"2:1": ["playing", "ended"]}
    assert by_reply == (second if barge_in else {"1:1": ["playing", "ended"], **second})


def test_close_code_table_covers_the_gateway_and_backoff_doubles(
    mock_page: tuple[Any, Any],
) -> None:
    page, _ = mock_page
    result = run_js(
        page,
        """
        const policy = { initialDelayMs: 500, maxDelayMs: 15000 };
        return {
          codes: Object.fromEntries(
            Object.entries(tc.CLOSE_CODES).map(([code, row]) => [code, row.reconnect])),
          low: [1, 2, 3, 10].map((n) => tc.backoffDelay(n, policy, () => 0)),
          high: [1, 2, 3, 10].map((n) => tc.backoffDelay(n, policy, () => 1)),
          should: [4503, 4410, 9999].map(tc.shouldReconnect),
        };
        """,
    )
    gateway_codes = {v for k, v in vars(frames).items() if k.startswith("CLOSE_")}
    table = {int(code): reconnect for code, reconnect in result["codes"].items()}
    assert gateway_codes <= set(table)
    assert {code for code, reconnect in table.items() if reconnect} == RECONNECTS
    assert result["low"] == [250, 500, 1000, 7500]
    assert result["high"] == [500, 1000, 2000, 15000]
    assert result["should"] == [True, False, False]


CLOSE_SCRIPT = """
const client = new tc.TutorClient({
  engineUrl: args[0], engineToken: args[2] ?? "t",
  reconnect: { maxAttempts: args[1], initialDelayMs: 50, maxDelayMs: 100 },
});
const events = record(client);
client.connect().catch(() => {});
await until(() => client.state === "closed", 120000, "the client to stop");
return summary(events.filter((e) => ["state", "reconnecting", "engine", "error"].includes(e.name)));
"""


def reconnects(events: list[dict]) -> list[dict]:
    return [e["detail"] for e in events if e["name"] == "reconnecting"]


@pytest.mark.parametrize(
    "code", [1000, 1001, 1011, 1012, 1013, 4401, 4404, 4408, 4409, 4410, 4503, 4504]
)
def test_reconnects_only_on_codes_that_allow_it(
    mock_page: tuple[Any, Any], scripted: ScriptedServer, code: int
) -> None:
    page, _ = mock_page
    events = run_js(page, CLOSE_SCRIPT, scripted.url(f"/close/{code}"), 1)
    final = states(events)[-1]
    assert final["state"] == "closed" and final["code"] == code
    if code in RECONNECTS:
        assert [(r["attempt"], r["code"]) for r in reconnects(events)] == [(1, code)]
        assert scripted.connections[f"/close/{code}"] == 2 and final["gaveUp"] is True
    else:
        assert reconnects(events) == [] and final["gaveUp"] is False
        assert scripted.connections[f"/close/{code}"] == 1


def test_recording_sends_webm_opus_after_queued_messages(
    mock_page: tuple[Any, Any], scripted: ScriptedServer
) -> None:
    page, _ = mock_page
    recording = run_js(
        page,
        """
        const client = new tc.TutorClient({
          engineUrl: args[0], engineToken: "t", reconnect: false, autoStopSilenceMs: 800,
        });
        const events = record(client);
        const opened = client.connect();
        client.sendText("queued while connecting");
        await opened;
        await client.startRecording();
        const sent = () => events.find((e) => e.name === "recording" && e.detail.state === "sent");
        await until(sent, 60000, "the recording to end at the silence and be sent");
        return sent().detail;
        """,
        scripted.url("/record"),
    )
    frames_in = wait_until(
        lambda: len(scripted.received["/record"]) >= 3 and scripted.received["/record"],
        30,
        "3 frames",
    )
    options, text, audio = (json.loads(f) for f in frames_in[:3])
    assert options == {"type": "options", "stream": True}
    assert text == {"type": "text", "content": "queued while connecting"}
    assert audio["type"] == "audio" and audio["format"] == "webm"
    clip = base64.b64decode(audio["data"])
    assert clip[:4] == b"\x1a\x45\xdf\xa3" and b"A_OPUS" in clip  # EBML (WebM), Opus codec
    assert recording["format"] == "webm" and recording["bytes"] == len(clip)
    assert recording["durationMs"] > 0


# Real gateway closes.


SESSION_SCRIPT = """
const session = await createSession(31);
const options = (token) => ({
  engineUrl: session.engine_url, engineToken: token ?? session.engine_token,
  reconnect: { initialDelayMs: 50, maxDelayMs: 100 },
});
"""


def test_deleted_session_closes_4410_without_reconnecting(mock_page: tuple[Any, Any]) -> None:
    page, _ = mock_page
    result = run_js(
        page,
        SESSION_SCRIPT
        + """
        const client = new tc.TutorClient(options());
        const events = record(client);
        await client.connect();
        await until(() => client.engineState === "ready", 120000, "the engine");
        const deleted = await fetch(`/v1/sessions/${session.session_id}`, { method: "DELETE" });
        await until(() => client.state === "closed", 30000, "the close");
        return { status: deleted.status, events: summary(events) };
        """,
    )
    final = states(result["events"])[-1]
    assert result["status"] == 204
    assert (final["code"], final["gaveUp"]) == (4410, False)
    assert reconnects(result["events"]) == []


def test_wrong_token_and_unknown_session_do_not_reconnect(mock_page: tuple[Any, Any]) -> None:
    page, _ = mock_page
    result = run_js(
        page,
        SESSION_SCRIPT
        + """
        const cases = {
          4401: options("not-the-token"),
          4404: { ...options(), engineUrl: session.engine_url.replace(session.session_id, "nope") },
        };
        const out = {};
        for (const [code, opts] of Object.entries(cases)) {
          const client = new tc.TutorClient(opts);
          const events = record(client);
          await client.connect();
          await until(() => client.state === "closed", 30000, `close ${code}`);
          out[code] = summary(events);
        }
        out.token = session.engine_token;
        return out;
        """,
    )
    for code in (4401, 4404):
        events = result[str(code)]
        final = states(events)[-1]
        assert (final["code"], final["gaveUp"]) == (code, False)
        assert reconnects(events) == []
        assert [e["name"] for e in events if e["name"] == "error"] == ["error"]
        assert result["token"] not in json.dumps(events)


def test_replaced_connection_4409_stays_closed(mock_page: tuple[Any, Any]) -> None:
    page, _ = mock_page
    result = run_js(
        page,
        SESSION_SCRIPT
        + """
        const first = new tc.TutorClient(options());
        const firstEvents = record(first);
        await first.connect();
        await until(() => first.engineState === "ready", 120000, "the engine");
        const others = [new tc.TutorClient(options()), new tc.TutorClient(options())];
        for (const other of others) await other.connect();
        await until(() => first.state === "closed", 30000, "the oldest connection to be replaced");
        const replies = others.map((other) => {
          const got = [];
          other.on("text", (m) => got.push(m.content));
          other.sendText("still here");
          return got;
        });
        await until(() => replies.every((got) => got.length > 0), 60000, "both others to answer");
        others.forEach((other) => other.close());
        return { events: summary(firstEvents), replies };
        """,
    )
    final = states(result["events"])[-1]
    assert (final["code"], final["gaveUp"]) == (4409, False)
    assert reconnects(result["events"]) == []
    assert all("still here" in got[0] for got in result["replies"])


def test_engine_unavailable_4503_reconnects_with_backoff_then_gives_up(
    page: Any, gateway_factory
) -> None:
    server = gateway_factory(engine_command=f"{sys.executable} -c 'import sys; sys.exit(3)'")
    open_page(page, f"{server.http}/demo")
    session = run_js(page, "return createSession(1);")
    url = f"{session['engine_url']}?x=1"  # the token is appended with '&'
    events = run_js(page, CLOSE_SCRIPT, url, 2, session["engine_token"])
    assert [(r["attempt"], r["code"]) for r in reconnects(events)] == [(1, 4503), (2, 4503)]
    assert [r["delayMs"] <= 100 for r in reconnects(events)] == [True, True]
    final = states(events)[-1]
    assert (final["code"], final["gaveUp"]) == (4503, True)
    assert "unavailable" in [e["detail"]["state"] for e in events if e["name"] == "engine"]


def test_unreachable_gateway_1006_reconnects_then_gives_up(mock_page: tuple[Any, Any]) -> None:
    page, _ = mock_page
    events = run_js(page, CLOSE_SCRIPT, f"ws://127.0.0.1:{free_port()}/ws/ws/x", 2)
    assert [(r["attempt"], r["code"]) for r in reconnects(events)] == [(1, 1006), (2, 1006)]
    final = states(events)[-1]
    assert (final["code"], final["gaveUp"]) == (1006, True)
