"""A chat model behind an OpenAI-compatible HTTP API (vLLM's server in production).

Replies stream as server-sent events (``"stream": true``); closing the stream when a reply is
cancelled makes vLLM abort the request and free its batch slot. Each request asks for the
token usage (``stream_options.include_usage``: a last chunk with ``usage``) and carries the
W3C ``traceparent`` of the current span when tracing is on.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from tutor_contract import tracing

from ..config import EngineSettings
from .base import ChatMessage, Usage

log = logging.getLogger("tutor_engine.llm")


class LLMError(RuntimeError):
    """The LLM server refused or broke a request."""


def sse_chunk(line: str) -> tuple[dict[str, Any] | None, bool]:
    """(the chunk or None, whether the stream ended) for one SSE line of a chat stream."""
    if not line.startswith("data:"):
        return None, False  # blank separators, comments, "event:" lines
    data = line[5:].strip()
    if data == "[DONE]":
        return None, True
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise LLMError(f"LLM server sent a malformed event: {data[:80]!r}") from exc
    if not isinstance(chunk, dict):
        raise LLMError(f"LLM server sent a malformed event: {data[:80]!r}")
    if "error" in chunk:
        raise LLMError(f"LLM server error: {chunk['error']}")
    return chunk, False


def chunk_delta(chunk: dict[str, Any]) -> str | None:
    """The content delta of a chat completion chunk (None if it has none)."""
    choices = chunk.get("choices") or [{}]
    return (choices[0].get("delta") or {}).get("content")


def read_usage(chunk: dict[str, Any], usage: Usage) -> None:
    """Copy the chunk's ``usage`` (if it has one: the last chunk, with include_usage)."""
    reported = chunk.get("usage")
    if not isinstance(reported, dict):
        return
    for key in ("prompt_tokens", "completion_tokens"):
        value = reported.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            setattr(usage, key, value)


def sse_deltas(line: str) -> tuple[str | None, bool]:
    """(content delta or None, whether the stream ended) for one SSE line of a chat stream."""
    chunk, done = sse_chunk(line)
    return (chunk_delta(chunk) if chunk is not None else None), done


def server_origin(base_url: str) -> str:
    """``scheme://host[:port]`` of a base URL: what messages name (never its credentials or
    path)."""
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError):
        return "(invalid URL)"
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}" + (f":{url.port}" if url.port else "")


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
}


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """(``unreachable`` or ``not ready``, why) for a failed request to the LLM server, in
    words a person can act on: ``connection refused``, ``name not resolved``, ``answered
    HTTP 503``, ..."""
    if isinstance(exc, httpx.HTTPStatusError):
        return "not ready", f"answered HTTP {exc.response.status_code}"
    if isinstance(exc, httpx.ConnectTimeout):
        return "unreachable", "connection timed out"
    if isinstance(exc, httpx.TimeoutException):
        return "not ready", "no answer in time"
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return "unreachable", "host name not resolved"
        if isinstance(seen, OSError) and seen.errno in _ERRNO_WORDS:
            return "unreachable", _ERRNO_WORDS[seen.errno]
        seen = seen.__cause__ or seen.__context__
    kind = "unreachable" if isinstance(exc, httpx.TransportError) else "not ready"
    return kind, str(exc) or type(exc).__name__


class OpenAICompatibleLLM:
    """Streams chat completions from ``ENGINE_LLM_BASE_URL`` (e.g. ``http://127.0.0.1:8001/v1``)."""

    name = "openai-llm"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.model = settings.llm_model
        self._client = httpx.AsyncClient(
            base_url=settings.llm_base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {settings.llm_api_key}"},
            timeout=httpx.Timeout(settings.llm_timeout_seconds, connect=5.0),
        )
        self.origin = server_origin(settings.llm_base_url)
        # While load() waits: why the server is not usable yet (shown on /readyz).
        self.problem: str | None = None

    async def load(self) -> None:
        """Wait for the server to list its models, pick one if unset, and warm it up."""
        wait = self.settings.llm_wait_seconds
        deadline = time.monotonic() + wait
        while True:
            try:
                response = await self._client.get("models")
                response.raise_for_status()
                break
            except httpx.HTTPError as exc:
                kind, why = describe_failure(exc)
                self.problem = f"LLM server {self.origin} {kind}: {why}"
                if time.monotonic() >= deadline:
                    raise LLMError(
                        f"{self.problem} (waited {wait:.0f}s, ENGINE_LLM_WAIT_SECONDS)"
                    ) from exc
                await asyncio.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
        self.problem = None
        served = [m.get("id") for m in response.json().get("data", [])]
        if not self.model:
            if not served:
                raise LLMError(f"LLM server {self.origin} serves no model")
            self.model = served[0]
        elif served and self.model not in served:
            raise LLMError(f"LLM server does not serve {self.model!r} (it serves {served})")
        async for _ in self._stream([ChatMessage("user", "Hi")], max_tokens=1):
            pass
        log.info("LLM %s ready at %s", self.model, self.origin)

    async def close(self) -> None:
        await self._client.aclose()

    def stream(
        self, messages: Sequence[ChatMessage], usage: Usage | None = None
    ) -> AsyncIterator[str]:
        return self._stream(messages, max_tokens=self.settings.llm_max_tokens, usage=usage)

    async def _stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, usage: Usage | None = None
    ) -> AsyncIterator[str]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
            "temperature": self.settings.llm_temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        # The caller's span (engine.llm) is current here: the request becomes its child.
        headers = tracing.inject()
        async with self._client.stream(
            "POST", "chat/completions", json=body, headers=headers
        ) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode("utf-8", "replace")[:200]
                raise LLMError(f"LLM server answered {response.status_code}: {detail}")
            async for line in response.aiter_lines():
                chunk, done = sse_chunk(line)
                if done:
                    return
                if chunk is None:
                    continue
                if usage is not None:
                    read_usage(chunk, usage)
                if delta := chunk_delta(chunk):
                    yield delta
