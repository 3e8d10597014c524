"""The engine's Prometheus metrics, scraped from /metrics of a real engine after real turns.

Turns go over a relay connection (the gateway's), so each test waits for the ``done`` receipt
of a frame: by then its turn has ended and everything it measures has been recorded.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from tutor_contract.relay import RELAY_HEADER, parse_receipt
from tutor_engine.audio import wav_duration
from tutor_engine.backends import Backends
from tutor_engine.backends.mock import (
    MockASR,
    MockLLM,
    MockTTS,
    make_wav,
    mock_prompt_tokens,
)
from tutor_engine.backends.openai_llm import OpenAICompatibleLLM
from tutor_engine.config import EngineSettings
from tutor_engine.prompt import build_prompt

from tests.servers import RunningServer

from .conftest import engine, recv, serve
from .fake_vllm import fake_vllm, prompt_tokens

RELAY = {RELAY_HEADER: "1"}
TUTOR = "42"
QUESTION = "Why is the sky blue?"
STAGES = ("decode", "asr", "retrieval", "llm_first_token", "llm", "tts_first_chunk", "tts")

# What the contract (and the dashboards, alerts and Prometheus test) name.
NAMES = {
    "tutor_engine_stage_seconds": "histogram",
    "tutor_engine_first_audio_seconds": "histogram",
    "tutor_engine_first_text_seconds": "histogram",
    "tutor_engine_turn_seconds": "histogram",
    "tutor_engine_history_seconds": "histogram",
    "tutor_engine_turns": "counter",
    "tutor_engine_messages": "counter",
    "tutor_engine_interruptions": "counter",
    "tutor_engine_errors": "counter",
    "tutor_engine_history_errors": "counter",
    "tutor_engine_audio_input_seconds": "counter",
    "tutor_engine_audio_output_seconds": "counter",
    "tutor_engine_llm_prompt_tokens": "counter",
    "tutor_engine_llm_completion_tokens": "counter",
    "tutor_engine_sessions": "gauge",
    "tutor_engine_connections": "gauge",
    "tutor_engine_ready": "gauge",
    "tutor_engine_turns_running": "gauge",
    "tutor_engine_turns_waiting": "gauge",
    "tutor_engine_model_load_seconds": "gauge",
}


class FakeKnowledge:
    """A knowledge base that always finds one passage (the embedder is tested elsewhere)."""

    name = "fake-kb"

    def __init__(self) -> None:
        self.queries: list[str] = []

    async def load(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def search(self, kb_id: str, query: str) -> list[str]:
        self.queries.append(query)
        return [f"Passage of {kb_id}: Rayleigh scattering."]


def mock_backends(**llm: Any) -> Backends:
    return Backends(
        llm=MockLLM(int(TUTOR), **llm),
        asr=MockASR(),
        tts=MockTTS(),
        knowledge=FakeKnowledge(),  # type: ignore[arg-type]
    )


@pytest.fixture
def running() -> Iterator[RunningServer]:
    with serve(engine(mock_backends(), tutor_id=int(TUTOR))) as running:
        yield running


class Scrape:
    """One scrape of /metrics: families by name, and sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(
            sample.value
            for family in self.families.values()
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def count(self, histogram: str, **labels: str) -> float:
        return self.value(f"{histogram}_count", **labels)

    def stages(self) -> dict[str, float]:
        return {s: self.count("tutor_engine_stage_seconds", stage=s) for s in STAGES}


def scrape(running: RunningServer) -> Scrape:
    return Scrape(httpx.get(f"{running.http}/metrics").text)


def audio_frame(text: str) -> tuple[str, bytes]:
    wav = make_wav(text)
    return json.dumps({"type": "audio", "data": base64.b64encode(wav).decode()}), wav


async def until_done(ws: Any, seq: int) -> list[dict[str, Any]]:
    """The client messages up to the ``done`` receipt of frame ``seq``."""
    got: list[dict[str, Any]] = []
    while True:
        frame = await ws.recv()
        receipt = parse_receipt(frame)
        if receipt is None:
            got.append(json.loads(frame))
        elif not receipt.started and receipt.seq == seq:
            return got


def test_every_series_is_named_as_the_contract_says_and_labelled_by_tutor(
    running: RunningServer,
) -> None:
    metrics = scrape(running)
    engine_families = {  # less the _created timestamps prometheus_client adds
        n: f
        for n, f in metrics.families.items()
        if n.startswith("tutor_engine_") and not n.endswith("_created")
    }
    assert {n: f.type for n, f in engine_families.items()} == NAMES
    for family in engine_families.values():
        assert family.samples, f"{family.name} has no series before the first turn"
        for sample in family.samples:
            assert sample.labels.get("tutor_id") == TUTOR, sample
            assert not {"session", "session_id", "student"} & set(sample.labels), sample
    # Every bounded label value is there from the start, at zero.
    assert metrics.stages() == dict.fromkeys(STAGES, 0.0)
    for mode in ("stream", "whole"):
        assert metrics.count("tutor_engine_first_audio_seconds", mode=mode) == 0
        for kind in ("audio", "text"):
            assert metrics.count("tutor_engine_first_text_seconds", mode=mode, input=kind) == 0
    assert metrics.value("tutor_engine_ready") == 1
    loaded = {
        s.labels["model"]
        for s in metrics.families["tutor_engine_model_load_seconds"].samples
        if s.value >= 0
    }
    assert loaded == {"llm", "asr", "tts", "kb"}
    # The voice buckets: from 10 ms to 60 s.
    edges = {
        s.labels["le"]
        for s in metrics.families["tutor_engine_first_audio_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert {"0.01", "0.1", "0.5", "60.0", "+Inf"} <= edges


async def test_whole_replies_count_each_stage_once_per_turn_tokens_and_audio(
    running: RunningServer,
) -> None:
    frame, wav = audio_frame(QUESTION)
    async with websockets.connect(f"{running.ws}/ws/m1?kb_id=sky", additional_headers=RELAY) as ws:
        await ws.send(frame)
        audio_turn = await until_done(ws, 1)
        after_audio = scrape(running)
        assert after_audio.value("tutor_engine_connections") == 1
        assert after_audio.value("tutor_engine_sessions") == 1
        await ws.send(json.dumps({"type": "text", "content": "And at sunset?"}))
        text_turn = await until_done(ws, 2)
    after_text = scrape(running)

    assert [m["type"] for m in audio_turn] == ["transcription", "text", "audio"]
    assert [m["type"] for m in text_turn] == ["text"]
    assert after_audio.stages() == dict.fromkeys(STAGES, 1.0)
    assert after_text.stages() == {
        **dict.fromkeys(STAGES, 1.0),
        "retrieval": 2.0,
        "llm_first_token": 2.0,
        "llm": 2.0,
    }
    assert after_text.value("tutor_engine_turns_total", input="audio") == 1
    assert after_text.value("tutor_engine_turns_total", input="text") == 1
    assert after_text.count("tutor_engine_first_audio_seconds", mode="whole") == 1
    assert after_text.count("tutor_engine_first_audio_seconds", mode="stream") == 0
    for kind in ("audio", "text"):
        assert after_text.count("tutor_engine_first_text_seconds", mode="whole", input=kind) == 1
    # The voice SLO includes every stage before the first audio.
    slo = after_audio.value("tutor_engine_first_audio_seconds_sum")
    stages = ("decode", "asr", "llm", "tts")
    spent = sum(after_audio.value("tutor_engine_stage_seconds_sum", stage=s) for s in stages)
    assert slo >= spent > 0

    # Audio seconds: the user's decoded audio in, the synthesised reply out.
    assert after_text.value("tutor_engine_audio_input_seconds_total") == pytest.approx(
        wav_duration(wav)
    )
    spoken = wav_duration(base64.b64decode(audio_turn[-1]["data"]))
    assert after_text.value("tutor_engine_audio_output_seconds_total") == pytest.approx(spoken)

    # Tokens as the mock LLM reports them: the first prompt is persona, passage and question.
    settings = EngineSettings(_env_file=None)
    first_prompt = build_prompt(
        settings.system_prompt,
        [],
        QUESTION,
        passages=["Passage of sky: Rayleigh scattering."],
        context_tokens=settings.llm_context_tokens,
        reply_tokens=settings.llm_max_tokens,
    )
    assert after_audio.value("tutor_engine_llm_prompt_tokens_total") == mock_prompt_tokens(
        first_prompt
    )
    assert after_text.value("tutor_engine_llm_prompt_tokens_total") > mock_prompt_tokens(
        first_prompt
    )
    words = sum(len(m["content"].split()) for m in (audio_turn[1], text_turn[0]))
    assert after_text.value("tutor_engine_llm_completion_tokens_total") == words
    assert after_text.value("tutor_engine_errors_total") == 0


async def test_streamed_replies_measure_the_first_chunk_and_all_synthesis_once(
    running: RunningServer,
) -> None:
    frame, _ = audio_frame("Explain recursion. Then explain iteration, please.")
    url = f"{running.ws}/ws/m2?stream=1"
    async with websockets.connect(url, additional_headers=RELAY) as ws:
        await ws.send(frame)
        events = await until_done(ws, 1)
    metrics = scrape(running)
    chunks = [e for e in events if e["type"] == "audio_chunk"]
    assert len(chunks) > 1
    assert metrics.stages() == {**dict.fromkeys(STAGES, 1.0), "retrieval": 0.0}  # no kb_id
    assert metrics.count("tutor_engine_first_audio_seconds", mode="stream") == 1
    assert metrics.count("tutor_engine_first_text_seconds", mode="stream", input="audio") == 1
    assert metrics.count("tutor_engine_first_audio_seconds", mode="whole") == 0
    spoken = sum(wav_duration(base64.b64decode(c["data"])) for c in chunks)
    assert metrics.value("tutor_engine_audio_output_seconds_total") == pytest.approx(spoken)
    first = metrics.value("tutor_engine_stage_seconds_sum", stage="tts_first_chunk")
    assert metrics.value("tutor_engine_stage_seconds_sum", stage="tts") >= first


async def test_errors_by_reason_and_interruptions_are_counted() -> None:
    with serve(engine(mock_backends(delay_s=0.05), tutor_id=int(TUTOR))) as running:
        url = f"{running.ws}/ws/m3?stream=1"
        async with websockets.connect(url, additional_headers=RELAY) as ws:
            await ws.send("not json")
            await until_done(ws, 1)
            await ws.send('{"type": "audio", "data": "bm90IGEgd2F2"}')  # "not a wav"
            await until_done(ws, 2)
            await ws.send(audio_frame("")[0])  # no speech in it
            assert [m["type"] for m in await until_done(ws, 3)] == ["error"]
            await ws.send('{"type": "text", "content": "Tell me a long story"}')
            while (await recv(ws)).get("type") != "text_delta":
                pass
            await ws.send('{"type": "text", "content": "Stop"}')
            cut = await until_done(ws, 4)
            await until_done(ws, 5)
        metrics = scrape(running)
    assert [m["type"] for m in cut][-1] == "interrupted"
    assert metrics.value("tutor_engine_errors_total", reason="protocol") == 1
    assert metrics.value("tutor_engine_errors_total", reason="audio") == 2
    assert metrics.value("tutor_engine_errors_total") == 3
    assert metrics.value("tutor_engine_interruptions_total") == 1
    assert metrics.value("tutor_engine_turns_total", input="audio") == 2
    assert metrics.value("tutor_engine_turns_total", input="text") == 2


@pytest.fixture(scope="module")
def vllm() -> Iterator[RunningServer]:
    app = fake_vllm()
    with serve(app, ready=False) as running:
        running.requests = app.state.requests  # type: ignore[attr-defined]
        yield running


async def test_tokens_are_the_usage_an_openai_compatible_server_reports(
    vllm: RunningServer,
) -> None:
    settings = EngineSettings(_env_file=None, llm_backend="openai", llm_base_url=f"{vllm.http}/v1")
    backends = Backends(llm=OpenAICompatibleLLM(settings), asr=MockASR(), tts=MockTTS())
    with serve(engine(backends, tutor_id=int(TUTOR))) as running:
        loads = len(vllm.requests)  # type: ignore[attr-defined]
        async with websockets.connect(f"{running.ws}/ws/m4", additional_headers=RELAY) as ws:
            await ws.send(json.dumps({"type": "text", "content": QUESTION}))
            (reply,) = await until_done(ws, 1)
        metrics = scrape(running)
    request = vllm.requests[loads]  # type: ignore[attr-defined]
    assert request["stream_options"] == {"include_usage": True}
    assert metrics.value("tutor_engine_llm_prompt_tokens_total") == prompt_tokens(
        request["messages"]
    )
    assert metrics.value("tutor_engine_llm_completion_tokens_total") == len(
        reply["content"].split(" ")
    )
