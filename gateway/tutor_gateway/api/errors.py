"""REST error handling: the request body limit (413) and 422 bodies that always encode."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_MAX_DEPTH = 16  # how deep an echoed ``input`` is shown before it is cut to "..."
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


class BodyTooLarge(HTTPException):
    """A request body passed MAX_REQUEST_BODY_BYTES (raised from ``receive`` as it streams)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, detail=f"Request body larger than {limit} bytes")


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, never reading past the limit.

    A Content-Length over the limit is answered at once, before the app runs; a chunked body
    is counted as it arrives and refused when the running total passes the limit (the app's
    read raises :class:`BodyTooLarge`, which renders as the 413). What the client still sends
    after the answer is dropped by the server as it arrives.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = BodyTooLarge(self.limit)
        if _content_length(scope) > self.limit:
            await _answer(refused, scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise refused
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
            await _answer(refused, scope, receive, send)


def _content_length(scope: Scope) -> int:
    try:
        return int(Headers(scope=scope).get("content-length", "0"))
    except ValueError:
        return 0


async def _answer(exc: HTTPException, scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"detail": exc.detail}, status_code=exc.status_code)(scope, receive, send)


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with FastAPI's ``detail`` list, made encodable whatever the input echoed in it.

    FastAPI's own handler fails (500) when an error echoes a non-finite number, a lone
    surrogate or non-UTF-8 bytes, or a value nested too deeply to encode.
    """
    return JSONResponse(status_code=422, content={"detail": encodable(exc.errors())})


def encodable(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON data that ``json.dumps(allow_nan=False)`` and UTF-8 accept."""
    if depth > _MAX_DEPTH:
        return "..."
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NON_FINITE.get(value, "NaN")
    if isinstance(value, str):
        return encodable_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, Mapping):
        return {encodable_text(str(k)): encodable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [encodable(v, depth + 1) for v in value]
    if isinstance(value, BaseException):
        return encodable_text(str(value))
    try:
        plain = jsonable_encoder(value)
    except Exception:  # anything at all still gets its 422
        return encodable_text(repr(value))
    return encodable(plain, depth + 1)


def encodes(text: str) -> bool:
    """Whether UTF-8 can hold ``text`` (it has no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encodable_text(text: str) -> str:
    """``text`` with anything UTF-8 cannot hold (lone surrogates) written as ``\\udXXX``."""
    return text if encodes(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")
