"""A stand-in for vLLM's OpenAI-compatible server: streams chat completions as SSE chunks.

The reply repeats the question and quotes the system prompt's course material, so tests can
see what the engine's prompt contained; every request body is kept in ``requests`` and its
headers in ``headers``. With ``stream_options.include_usage`` the stream ends, as vLLM's does,
with a chunk holding no choices and the ``usage``: one prompt token per 4 characters of the
messages, one completion token per word.

Faults for the next chat requests are queued in ``faults``, one a request: an ``int`` answers
with that HTTP status (and ``Retry-After-Ms: 1``, so a client's retry comes at once), a ``str``
is sent as a raw SSE line after the first word, e.g. an error event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


def chunk(
    delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, int] | None = None
) -> str:
    body: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(m["content"]) // 4 + 1 for m in messages)


def fake_vllm(token_delay: float = 0.0) -> FastAPI:
    app = FastAPI()
    app.state.requests = []
    app.state.headers = []
    app.state.faults = []

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        app.state.requests.append(body)
        app.state.headers.append(dict(request.headers))
        fault = app.state.faults.pop(0) if app.state.faults else None
        if isinstance(fault, int):
            return JSONResponse(
                {"object": "error", "message": "overloaded"},
                status_code=fault,
                headers={"Retry-After-Ms": "1"},
            )
        if body.get("model") != MODEL:
            return JSONResponse(
                {"object": "error", "message": f"The model `{body.get('model')}` does not exist."},
                status_code=404,
            )
        system = body["messages"][0]["content"]
        material = system.partition("Course material:")[2].strip()
        reply = f"You asked: {body['messages'][-1]['content']} Material: {material or 'none'}."
        words = reply.split(" ")[: body.get("max_tokens", 1000)]

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            for i, word in enumerate(words):
                if token_delay:
                    await asyncio.sleep(token_delay)
                yield chunk({"content": word if i == 0 else " " + word})
                if fault is not None:
                    yield f"{fault}\n\n"
                    return
            yield chunk({}, finish="stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                prompt = prompt_tokens(body["messages"])
                used = {
                    "prompt_tokens": prompt,
                    "completion_tokens": len(words),
                    "total_tokens": prompt + len(words),
                }
                yield chunk(None, usage=used)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
