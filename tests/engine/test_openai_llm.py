"""The OpenAI-compatible LLM backend against a real HTTP server that streams like vLLM."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import websockets
from tutor_engine.backends.base import ChatMessage
from tutor_engine.backends.openai_llm import LLMError, OpenAICompatibleLLM
from tutor_engine.config import EngineSettings

from tests.servers import RunningServer

from .conftest import engine, recv, serve
from .fake_vllm import MODEL, fake_vllm


@pytest.fixture(scope="module")
def vllm() -> Iterator[RunningServer]:
    app = fake_vllm()
    with serve(app, ready=False) as running:
        running.requests = app.state.requests  # type: ignore[attr-defined]
        running.faults = app.state.faults  # type: ignore[attr-defined]
        yield running


def llm_settings(vllm: RunningServer, **overrides: object) -> EngineSettings:
    return EngineSettings(
        _env_file=None, llm_backend="openai", llm_base_url=f"{vllm.http}/v1", **overrides
    )


async def test_a_failed_answer_is_retried_once_before_the_first_token(vllm: RunningServer) -> None:
    llm = OpenAICompatibleLLM(llm_settings(vllm, llm_model=MODEL))
    before = len(vllm.requests)  # type: ignore[attr-defined]
    vllm.faults.append(503)  # type: ignore[attr-defined]
    pieces = [p async for p in llm.stream([ChatMessage("user", "hi")])]
    assert "".join(pieces) == "You asked: hi Material: none."
    assert len(vllm.requests) - before == 2  # type: ignore[attr-defined]
    vllm.faults.extend([503, 503])  # type: ignore[attr-defined]
    with pytest.raises(LLMError, match=r"answered 503: .*overloaded"):
        [p async for p in llm.stream([ChatMessage("user", "hi")])]
    await llm.close()
    assert len(vllm.requests) - before == 4  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ('data: {"error": {"message": "overloaded"}}', "LLM server error: overloaded"),
        ("data: {oops", "malformed"),
    ],
)
async def test_a_stream_broken_midway_raises(vllm: RunningServer, event: str, error: str) -> None:
    llm = OpenAICompatibleLLM(llm_settings(vllm, llm_model=MODEL))
    before = len(vllm.requests)  # type: ignore[attr-defined]
    vllm.faults.append(event)  # type: ignore[attr-defined]
    pieces: list[str] = []
    with pytest.raises(LLMError, match=error):
        async for piece in llm.stream([ChatMessage("user", "hi")]):
            pieces.append(piece)
    await llm.close()
    assert pieces == ["You"]
    assert len(vllm.requests) - before == 1  # type: ignore[attr-defined]  # no retry midway


async def test_streams_tokens_from_the_served_model(vllm: RunningServer) -> None:
    llm = OpenAICompatibleLLM(llm_settings(vllm, llm_max_tokens=64))
    await llm.load()
    assert llm.model == MODEL  # picked from /v1/models
    pieces = [p async for p in llm.stream([ChatMessage("user", "What is 2+2?")])]
    await llm.close()
    assert len(pieces) > 3
    assert "".join(pieces) == "You asked: What is 2+2? Material: none."
    request = vllm.requests[-1]  # type: ignore[attr-defined]
    assert (request["stream"], request["max_tokens"], request["model"]) == (True, 64, MODEL)


async def test_a_model_the_server_does_not_serve_fails_loading(vllm: RunningServer) -> None:
    llm = OpenAICompatibleLLM(llm_settings(vllm, llm_model="gpt-17"))
    with pytest.raises(LLMError, match="does not serve 'gpt-17'"):
        await llm.load()
    await llm.close()


async def test_an_error_status_is_raised_with_its_detail(vllm: RunningServer) -> None:
    llm = OpenAICompatibleLLM(llm_settings(vllm, llm_model="gpt-17"))
    with pytest.raises(LLMError, match=r"answered 404: .*does not exist"):
        [p async for p in llm.stream([ChatMessage("user", "hi")])]
    await llm.close()


async def test_an_unreachable_server_fails_loading_after_the_wait() -> None:
    settings = EngineSettings(
        _env_file=None,
        llm_backend="openai",
        llm_base_url="http://127.0.0.1:9/v1",
        llm_wait_seconds=0,
    )
    llm = OpenAICompatibleLLM(settings)
    refused = r"LLM server http://127\.0\.0\.1:9 unreachable: connection refused"
    with pytest.raises(LLMError, match=refused):
        await llm.load()
    await llm.close()


async def test_the_engine_answers_with_the_served_model_and_keeps_history(
    vllm: RunningServer,
) -> None:
    app = engine(
        llm_backend="openai", llm_base_url=f"{vllm.http}/v1", system_prompt="You are Tutor Ada."
    )
    with serve(app) as running:
        async with websockets.connect(f"{running.ws}/ws/llm1") as ws:
            await ws.send('{"type": "text", "content": "What is a variable?"}')
            first = await recv(ws)
            await ws.send('{"type": "text", "content": "And a constant?"}')
            second = await recv(ws)
    assert first["content"] == "You asked: What is a variable? Material: none."
    assert second["content"] == "You asked: And a constant? Material: none."
    messages = vllm.requests[-1]["messages"]  # type: ignore[attr-defined]
    assert messages == [
        {"role": "system", "content": "You are Tutor Ada."},
        {"role": "user", "content": "What is a variable?"},
        {"role": "assistant", "content": first["content"]},
        {"role": "user", "content": "And a constant?"},
    ]
