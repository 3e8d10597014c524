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
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Path, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .backends import AudioDecodeError, Backends, build_backends
from .config import EngineSettings
from .history import ConversationStore
from .metrics import EngineMetrics
from .pipeline import TutorPipeline
from .protocol import AudioIn, ProtocolError, error_message, parse_client_frame

log = logging.getLogger("tutor_engine")

# WebSocket close codes (documented in the README).
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_READY = 1013  # "try again later"
SESSION_ID = Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")


class EngineState:
    """Everything one engine app holds: settings, backends, history, readiness."""

    def __init__(self, settings: EngineSettings, backends: Backends) -> None:
        self.settings = settings
        self.backends = backends
        self.store = ConversationStore(settings.max_history_messages, settings.session_ttl_seconds)
        self.pipeline = TutorPipeline(backends, self.store, settings.system_prompt)
        self.metrics = EngineMetrics()
        self.ready = False
        self.load_error: str | None = None

    async def load(self) -> None:
        """Load and warm every backend; record the failure instead of raising."""
        started = time.perf_counter()
        try:
            for backend in self.backends.all():
                await backend.load()
                log.info("loaded %s", backend.name)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model loading failed")
            return
        self.ready = True
        self.metrics.ready.set(1)
        log.info(
            "engine ready for tutor %s in %.2fs",
            self.settings.tutor_id,
            time.perf_counter() - started,
        )

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


def create_app(settings: EngineSettings | None = None, backends: Backends | None = None) -> FastAPI:
    """Build the engine app; models load in the background after startup."""
    settings = settings or EngineSettings()
    state = EngineState(settings, backends or build_backends(settings))

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
            "backends": {b.name: state.ready for b in state.backends.all()},
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
        state.metrics.connections.inc()
        try:
            await _serve(websocket, session_id, state)
        except WebSocketDisconnect:
            pass
        finally:
            state.metrics.connections.dec()
            state.metrics.sessions.set(len(state.store))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    return app


async def _serve(websocket: WebSocket, session_id: str, state: EngineState) -> None:
    """Answer the client's messages in order until it disconnects."""
    settings, metrics = state.settings, state.metrics
    while True:
        frame = await websocket.receive()
        if frame["type"] == "websocket.disconnect":
            return
        raw = frame.get("text") if frame.get("text") is not None else frame.get("bytes", b"")
        try:
            message = parse_client_frame(
                raw, max_bytes=settings.max_message_bytes, max_text_chars=settings.max_text_chars
            )
        except ProtocolError as exc:
            metrics.errors.labels("protocol").inc()
            await websocket.send_json(error_message(str(exc)))
            continue
        kind = "audio" if isinstance(message, AudioIn) else "text"
        metrics.messages.labels(kind).inc()
        with metrics.turn_seconds.labels(kind).time():
            try:
                await state.pipeline.run_turn(session_id, message, websocket.send_json)
            except AudioDecodeError as exc:
                metrics.errors.labels("audio").inc()
                await websocket.send_json(error_message(str(exc)))
            except Exception:
                log.exception("turn failed in session %s", session_id[:8])
                metrics.errors.labels("internal").inc()
                await websocket.send_json(error_message("The tutor could not answer; try again"))
