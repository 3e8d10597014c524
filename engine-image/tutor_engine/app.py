"""The engine's HTTP and WebSocket server (FastAPI).

``/ws/{session_id}`` speaks the seed's conversation protocol; ``/healthz`` says the process
is alive, ``/readyz`` that every model is loaded; ``/metrics`` is Prometheus text;
``DELETE /sessions/{id}`` drops a finished session's history.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import pathlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Path, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .backends import AudioDecodeError, Backend, Backends, build_backends
from .config import EngineSettings
from .history import ConversationStore
from .knowledge import KnowledgeError, check_kb_id
from .metrics import EngineMetrics
from .pipeline import Conversation, Send, TutorPipeline
from .protocol import (
    AudioIn,
    OptionsIn,
    ProtocolError,
    TextIn,
    error_message,
    interrupted_message,
    options_message,
    parse_client_frame,
)

log = logging.getLogger("tutor_engine")

# WebSocket close codes (documented in the README).
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_READY = 1013  # "try again later"
SESSION_ID = Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")


class EngineState:
    """Everything one engine app holds: settings, backends, history, readiness."""

    def __init__(
        self,
        settings: EngineSettings,
        backends: Backends,
        on_load_failure: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_load_failure = on_load_failure
        self.backends = backends
        self.store = ConversationStore(settings.max_history_messages, settings.session_ttl_seconds)
        self.metrics = EngineMetrics()
        self.pipeline = TutorPipeline(backends, self.store, settings, self.metrics)
        self.ready = False
        self.load_error: str | None = None
        self.loaded = {b.name: False for b in backends.all()}

    async def load(self) -> None:
        """Load and warm every backend at once; record failures instead of raising."""
        started = time.perf_counter()
        results = await asyncio.gather(
            *(self._load_one(b) for b in self.backends.all()), return_exceptions=True
        )
        errors = [str(r) for r in results if isinstance(r, BaseException)]
        if errors:
            self.load_error = "; ".join(errors)
            if self.settings.exit_on_load_failure:
                self._exit_for_load_failure()
            return
        self.ready = True
        self.metrics.ready.set(1)
        log.info(
            "engine ready for tutor %s in %.2fs",
            self.settings.tutor_id,
            time.perf_counter() - started,
        )

    def _exit_for_load_failure(self) -> None:
        """Leave the error where Kubernetes reads it, then ask the server to stop."""
        log.error("models failed to load; exiting: %s", self.load_error)
        try:
            pathlib.Path(self.settings.termination_log).write_text(f"{self.load_error}\n")
        except OSError as exc:
            log.warning("cannot write %s: %s", self.settings.termination_log, exc)
        if self.on_load_failure is not None:
            self.on_load_failure()

    async def _load_one(self, backend: Backend) -> None:
        started = time.perf_counter()
        try:
            await backend.load()
        except Exception as exc:
            log.exception("loading %s failed", backend.name)
            raise RuntimeError(f"{backend.name}: {type(exc).__name__}: {exc}") from exc
        self.loaded[backend.name] = True
        log.info("loaded %s in %.2fs", backend.name, time.perf_counter() - started)

    def authorized(self, key: str | None) -> bool:
        """Whether a caller presented the shared engine key (always, if none is configured)."""
        expected = self.settings.api_key
        return not expected or hmac.compare_digest((key or "").encode(), expected.encode())


async def _expire_history(state: EngineState) -> None:
    interval = min(60.0, state.settings.session_ttl_seconds / 4)
    while True:
        await asyncio.sleep(interval)
        dropped = state.store.expire()
        if dropped:
            log.info("dropped history of %d idle sessions", len(dropped))
        state.metrics.sessions.set(len(state.store))


def create_app(
    settings: EngineSettings | None = None,
    backends: Backends | None = None,
    on_load_failure: Callable[[], None] | None = None,
) -> FastAPI:
    """Build the engine app; models load in the background after startup.

    ``on_load_failure`` stops the server when ``exit_on_load_failure`` is set.
    """
    settings = settings or EngineSettings()
    state = EngineState(settings, backends or build_backends(settings), on_load_failure)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(state.load()), asyncio.create_task(_expire_history(state))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for backend in state.backends.all():
                with contextlib.suppress(Exception):
                    await backend.close()

    app = FastAPI(title="tutor-serving engine", version="0.1.0", lifespan=lifespan)
    app.state.engine = state

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "tutor_id": settings.tutor_id}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        body = {
            "ready": state.ready,
            "tutor_id": settings.tutor_id,
            "backends": dict(state.loaded),
            "error": state.load_error,
        }
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.delete("/sessions/{session_id}", status_code=204)
    async def drop_session(
        session_id: Annotated[str, SESSION_ID],
        x_engine_key: Annotated[str | None, Header()] = None,
    ) -> Response:
        if not state.authorized(x_engine_key):
            raise HTTPException(401, "Invalid engine key")
        state.store.drop(session_id)
        state.metrics.sessions.set(len(state.store))
        return Response(status_code=204)

    @app.websocket("/ws/{session_id}")
    async def conversation(websocket: WebSocket, session_id: str) -> None:
        await websocket.accept()
        if not state.authorized(websocket.headers.get("x-engine-key")):
            await websocket.send_json(error_message("Invalid engine key"))
            await websocket.close(CLOSE_UNAUTHORIZED, "invalid engine key")
            return
        if not state.ready:
            reason = state.load_error or "models are still loading"
            await websocket.send_json(error_message(f"Engine not ready: {reason}"))
            await websocket.close(CLOSE_NOT_READY, "engine not ready")
            return
        conv = Conversation(session_id, stream=_truthy(websocket.query_params.get("stream")))
        if kb_id := websocket.query_params.get("kb_id"):
            try:
                conv.kb_id = check_kb_id(kb_id)
            except KnowledgeError as exc:
                await websocket.send_json(error_message(f"{exc}; answering without it"))
        state.metrics.connections.inc()
        try:
            await _serve(websocket, conv, state)
        except WebSocketDisconnect:
            pass
        finally:
            state.metrics.connections.dec()
            state.metrics.sessions.set(len(state.store))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    return app


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


async def _serve(websocket: WebSocket, conv: Conversation, state: EngineState) -> None:
    """Answer the client's messages until it disconnects.

    A plain client's messages are answered one after another, as the seed did. On a streaming
    connection a turn runs in the background, and a new message cancels it (barge-in).
    """
    settings, metrics = state.settings, state.metrics
    lock = asyncio.Lock()

    async def send(message: dict[str, Any]) -> None:
        async with lock:
            await websocket.send_json(message)

    turn: asyncio.Task[None] | None = None
    try:
        while True:
            frame = await websocket.receive()
            if frame["type"] == "websocket.disconnect":
                return
            raw = frame.get("text") if frame.get("text") is not None else frame.get("bytes", b"")
            try:
                message = parse_client_frame(
                    raw,
                    max_bytes=settings.max_message_bytes,
                    max_text_chars=settings.max_text_chars,
                )
            except ProtocolError as exc:
                metrics.errors.labels("protocol").inc()
                await send(error_message(str(exc)))
                continue
            if isinstance(message, OptionsIn):
                conv.stream = message.stream
                await send(options_message(conv.stream))
                continue
            if not conv.stream:
                await _turn(state, conv, message, send)
                continue
            if turn is not None and not turn.done():
                await _interrupt(turn, conv, state, send)
            turn = asyncio.create_task(_turn(state, conv, message, send))
    finally:
        if turn is not None and not turn.done():
            turn.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await turn


async def _interrupt(
    turn: asyncio.Task[None], conv: Conversation, state: EngineState, send: Send
) -> None:
    """Cancel the reply in flight and tell the client how far it got."""
    reply = conv.reply
    turn.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await turn
    state.metrics.interruptions.inc()
    if reply is not None:
        await send(interrupted_message(reply.id, reply.text.strip()))


async def _turn(
    state: EngineState, conv: Conversation, message: TextIn | AudioIn, send: Send
) -> None:
    """Run one turn, turning any failure into an ``error`` message for the client."""
    metrics = state.metrics
    kind = "audio" if isinstance(message, AudioIn) else "text"
    metrics.messages.labels(kind).inc()
    with metrics.turn_seconds.labels(kind).time():
        try:
            await state.pipeline.run_turn(conv, message, send)
        except AudioDecodeError as exc:
            metrics.errors.labels("audio").inc()
            await send(error_message(str(exc)))
        except Exception:
            log.exception("turn failed in session %s", conv.session_id[:8])
            metrics.errors.labels("internal").inc()
            await send(error_message("The tutor could not answer; try again"))
