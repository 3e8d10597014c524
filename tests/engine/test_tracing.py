"""Engine traces: the gateway's context over a relay connection, the turn's span tree, and the
``traceparent`` of the LLM request, exported to memory by a real engine serving real turns.

OpenTelemetry lets a process set its tracer provider once: every test of the traces shares the
one in-memory provider of ``tests.support.tracing``, on for each test and empty at its start.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tutor_contract.relay import RELAY_HEADER, parse_receipt, trace_frame
from tutor_engine.backends import Backends
from tutor_engine.backends.mock import MockASR, MockTTS, make_wav
from tutor_engine.backends.openai_llm import OpenAICompatibleLLM
from tutor_engine.config import EngineSettings

from tests.servers import RunningServer
from tests.support.tracing import recorded_spans

from .conftest import engine, serve
from .fake_vllm import fake_vllm
from .test_metrics import FakeKnowledge

RELAY = {RELAY_HEADER: "1"}
TUTOR = 9


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recorded_spans() as exporter:
        yield exporter


@pytest.fixture(scope="module")
def vllm() -> Iterator[RunningServer]:
    app = fake_vllm()
    with serve(app, ready=False) as running:
        running.requests = app.state.headers  # type: ignore[attr-defined]
        yield running


@pytest.fixture
def running(vllm: RunningServer, spans: InMemorySpanExporter) -> Iterator[RunningServer]:
    settings = EngineSettings(_env_file=None, llm_backend="openai", llm_base_url=f"{vllm.http}/v1")
    backends = Backends(
        llm=OpenAICompatibleLLM(settings),
        asr=MockASR(),
        tts=MockTTS(),
        knowledge=FakeKnowledge(),  # type: ignore[arg-type]
    )
    with serve(engine(backends, tutor_id=TUTOR)) as running:
        yield running


def gateway_context() -> tuple[str, str, dict[str, str]]:
    """A made-up gateway span: (trace id, span id, its W3C carrier), as hex."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, {"traceparent": f"00-{trace_id}-{span_id}-01"}


async def until_done(ws: Any, seq: int) -> list[str]:
    """Every frame (receipts too) up to the ``done`` receipt of frame ``seq``."""
    frames: list[str] = []
    while True:
        frames.append(frame := await ws.recv())
        receipt = parse_receipt(frame)
        if receipt is not None and not receipt.started and receipt.seq == seq:
            return frames


def hexes(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def parent_of(span: ReadableSpan) -> tuple[str, str] | None:
    parent = span.parent
    return None if parent is None else (f"{parent.trace_id:032x}", f"{parent.span_id:016x}")


def by_name(spans: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in spans.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


async def test_a_turn_is_a_child_of_the_gateway_span_with_its_stages_and_llm_request(
    running: RunningServer, vllm: RunningServer, spans: InMemorySpanExporter
) -> None:
    trace_id, gateway_span, carrier = gateway_context()
    audio = base64.b64encode(make_wav("Why is the sky blue?")).decode()
    url = f"{running.ws}/ws/tracing-session-1?kb_id=sky"
    requests_before = len(vllm.requests)  # type: ignore[attr-defined]
    async with websockets.connect(url, additional_headers=RELAY) as ws:
        await ws.send(trace_frame(carrier))
        await ws.send(json.dumps({"type": "audio", "data": audio}))
        frames = await until_done(ws, 1)

    # The trace frame was consumed: not numbered, no receipt, no error; frame 1 is the audio.
    kinds = [json.loads(f)["type"] for f in frames]
    assert kinds == ["tutor.relay", "transcription", "text", "audio", "tutor.relay"]
    assert [parse_receipt(f) for f in (frames[0], frames[-1])] == [
        parse_receipt('{"type":"tutor.relay","started":1,"stream":false}'),
        parse_receipt('{"type":"tutor.relay","done":1,"stream":false,"reply":1}'),
    ]

    found = by_name(spans)
    (turn,) = found["engine.turn"]
    assert parent_of(turn) == (trace_id, gateway_span)
    assert turn.parent is not None and turn.parent.is_remote
    assert dict(turn.attributes or {}) == {
        "tutor.id": str(TUTOR),
        "session.id": "tracing-",  # the short id, as in the logs
        "message.type": "audio",
    }
    turn_id = hexes(turn)
    for stage in ("engine.decode", "engine.asr", "engine.retrieval", "engine.llm", "engine.tts"):
        (span,) = found[stage]
        assert parent_of(span) == turn_id, stage
    llm = found["engine.llm"][0]
    assert [e.name for e in llm.events] == ["first token"]
    assert (llm.attributes or {})["llm.completion_tokens"] > 0

    # The LLM request carried the context of engine.llm, so vLLM's own spans join the trace.
    (headers,) = vllm.requests[requests_before:]  # type: ignore[attr-defined]
    assert headers["traceparent"] == f"00-{trace_id}-{hexes(llm)[1]}-01"


async def test_a_context_applies_to_the_next_client_frame_only(
    running: RunningServer, spans: InMemorySpanExporter
) -> None:
    trace_id, gateway_span, carrier = gateway_context()
    async with websockets.connect(f"{running.ws}/ws/t2", additional_headers=RELAY) as ws:
        await ws.send(trace_frame(carrier))
        await ws.send('{"type": "text", "content": "first"}')
        first = await until_done(ws, 1)
        await ws.send('{"type": "text", "content": "second"}')
        second = await until_done(ws, 2)
    assert [json.loads(f)["type"] for f in first + second] == [
        "tutor.relay",
        "text",
        "tutor.relay",
    ] * 2
    turns = sorted(by_name(spans)["engine.turn"], key=lambda s: s.start_time or 0)
    assert len(turns) == 2
    assert parent_of(turns[0]) == (trace_id, gateway_span)
    assert turns[1].parent is None  # no carrier came: a trace of its own
    assert hexes(turns[1])[0] != trace_id


async def test_a_trace_frame_from_a_client_is_an_ordinary_bad_message(
    running: RunningServer, spans: InMemorySpanExporter
) -> None:
    # Without the relay header (a client, not the gateway) it is not consumed: it is a frame
    # like any other, answered with an error, and the next turn starts a trace of its own.
    _, _, carrier = gateway_context()
    async with websockets.connect(f"{running.ws}/ws/t3") as ws:
        await ws.send(trace_frame(carrier))
        assert json.loads(await ws.recv())["type"] == "error"
        await ws.send('{"type": "text", "content": "hello"}')
        await ws.send('{"type": "text", "content": "again"}')
        # Turns are answered in order: once "again" is answered, "hello"'s span has ended.
        assert [json.loads(await ws.recv())["type"] for _ in range(2)] == ["text", "text"]
    turns = sorted(by_name(spans)["engine.turn"], key=lambda s: s.start_time or 0)
    assert turns and all(turn.parent is None for turn in turns)
