"""A stand-in for vLLM's OpenAI-compatible server: streams chat completions as SSE chunks.

The reply repeats the question and quotes the system prompt's course material, so tests can
see what the engine's prompt contained; every request body is kept in ``requests``.
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


def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


def fake_vllm(token_delay: float = 0.0) -> FastAPI:
    app = FastAPI()
    app.state.requests = []

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        app.state.requests.append(body)
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
            yield chunk({}, finish="stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
