"""A chat model behind an OpenAI-compatible HTTP API (vLLM's server in production).

Replies stream through the ``openai`` SDK (``stream=True``); closing the stream when a reply is
cancelled makes vLLM abort the request and free its batch slot. Each request asks for the
token usage (``stream_options.include_usage``: a last chunk with ``usage``) and carries the
W3C ``traceparent`` of the current span when tracing is on.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import AsyncIterator, Sequence
from typing import cast

import httpx
import openai
import tenacity
from openai.types.chat import ChatCompletionMessageParam
from tutor_contract import tracing

from ..config import EngineSettings
from .base import ChatMessage, Usage

log = logging.getLogger("tutor_engine.llm")


class LLMError(RuntimeError):
    """The LLM server refused or broke a request."""


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
    if isinstance(exc, openai.APIStatusError):
        return "not ready", f"answered HTTP {exc.status_code}"
    seen: BaseException | None = exc
    while seen is not None:
        # The SDK's transport (httpx or its fork) raises ConnectTimeout under the SDK's error.
        if type(seen).__name__ == "ConnectTimeout":
            return "unreachable", "connection timed out"
        if isinstance(seen, socket.gaierror):
            return "unreachable", "host name not resolved"
        if isinstance(seen, OSError) and seen.errno in _ERRNO_WORDS:
            return "unreachable", _ERRNO_WORDS[seen.errno]
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, openai.APITimeoutError):
        return "not ready", "no answer in time"
    kind = "unreachable" if isinstance(exc, openai.APIConnectionError) else "not ready"
    return kind, str(exc.__cause__ or exc) or type(exc).__name__


class OpenAICompatibleLLM:
    """Streams chat completions from ``ENGINE_LLM_BASE_URL`` (e.g. ``http://127.0.0.1:8001/v1``)."""

    name = "openai-llm"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.model = settings.llm_model
        # One retry (with the SDK's backoff, honouring Retry-After) of a refused or reset
        # connection, a timeout or a 408/409/429/5xx answer. The SDK retries only until a
        # response arrives, so before the first token: a reply is never repeated. More would
        # keep a learner waiting several timeouts long; load() retries on its own.
        self._client = openai.AsyncOpenAI(
            base_url=settings.llm_base_url,
            # Never None (the SDK would read OPENAI_API_KEY) nor empty (it refuses that).
            api_key=settings.llm_api_key or "EMPTY",
            timeout=openai.Timeout(settings.llm_timeout_seconds, connect=5.0),
            max_retries=1,
        )
        self.origin = server_origin(settings.llm_base_url)
        # While load() waits: why the server is not usable yet (shown on /readyz).
        self.problem: str | None = None

    async def load(self) -> None:
        """Wait for the server to list its models, pick one if unset, and warm it up."""
        wait = self.settings.llm_wait_seconds
        deadline = time.monotonic() + wait

        def note(attempt: tenacity.RetryCallState) -> None:  # shown on /readyz as it happens
            failure = attempt.outcome.exception() if attempt.outcome else None
            assert failure is not None  # only failures are retried
            kind, why = describe_failure(failure)
            self.problem = f"LLM server {self.origin} {kind}: {why}"

        client = self._client.with_options(max_retries=0)  # retried here, every 2 s
        try:
            async for attempt in tenacity.AsyncRetrying(
                retry=tenacity.retry_if_exception_type(openai.APIError),
                stop=tenacity.stop_after_delay(wait),
                wait=lambda _: min(2.0, max(0.1, deadline - time.monotonic())),
                after=note,
                reraise=True,
            ):
                with attempt:
                    page = await client.models.list()
        except openai.APIError as exc:
            raise LLMError(f"{self.problem} (waited {wait:.0f}s, ENGINE_LLM_WAIT_SECONDS)") from exc
        self.problem = None
        served = [m.id for m in page.data]
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
        await self._client.close()

    def stream(
        self, messages: Sequence[ChatMessage], usage: Usage | None = None
    ) -> AsyncIterator[str]:
        return self._stream(messages, max_tokens=self.settings.llm_max_tokens, usage=usage)

    async def _stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, usage: Usage | None = None
    ) -> AsyncIterator[str]:
        """The reply's text deltas; every failure of the server raises LLMError."""
        try:
            chunks = await self._client.chat.completions.create(
                model=self.model,
                messages=[
                    cast(ChatCompletionMessageParam, {"role": m.role, "content": m.content})
                    for m in messages
                ],
                max_tokens=max_tokens,
                temperature=self.settings.llm_temperature,
                stream=True,
                stream_options={"include_usage": True},
                # The caller's span (engine.llm) is current here: the request becomes its child.
                extra_headers=tracing.inject(),
            )
            async with chunks:  # closed on cancellation too: vLLM aborts the request
                async for chunk in chunks:
                    if usage is not None and chunk.usage is not None:
                        usage.prompt_tokens = chunk.usage.prompt_tokens or 0
                        usage.completion_tokens = chunk.usage.completion_tokens or 0
                    if chunk.choices and (delta := chunk.choices[0].delta.content):
                        yield delta
        except openai.APIStatusError as exc:
            detail = exc.response.text[:200]
            raise LLMError(f"LLM server answered {exc.status_code}: {detail}") from exc
        except openai.APIConnectionError as exc:
            kind, why = describe_failure(exc)
            raise LLMError(f"LLM server {self.origin} {kind}: {why}") from exc
        except openai.APIError as exc:  # an error event in the stream
            raise LLMError(f"LLM server error: {exc.message}") from exc
        except ValueError as exc:  # an event that is not JSON
            raise LLMError(f"LLM server sent a malformed event: {exc}") from exc
