"""The engine's HTTP and WebSocket server (FastAPI).

``/ws/{session_id}`` speaks the seed's conversation protocol (served by ``connection``);
``/healthz`` says the process is alive, ``/readyz`` that every model is loaded; ``/metrics``
is Prometheus text; ``DELETE /sessions/{id}`` ends a session: its turns are cancelled and its
history dropped for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import pathlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Path, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.websockets import WebSocketDisconnected

from .backends import Backend, Backends, build_backends
from .config import EngineSettings
from .connection import Connection, Sessions
from .history import ConversationStore
from .knowledge import KnowledgeError, check_kb_id
from .metrics import EngineMetrics
from .pipeline import Conversation, TutorPipeline
from .protocol import error_message
from .scheduling import TurnScheduler

log = logging.getLogger("tutor_engine")

# WebSocket close codes (documented in the README).
CLOSE_UNAUTHORIZED = 4401
PARSE_THREADS = 2  # large frames parsed at once, engine-wide (each connection parses in order)
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
        self.store = ConversationStore(
            settings.max_history_messages,
            settings.session_ttl_seconds,
            max_ended=settings.max_ended_sessions,
        )
        self.metrics = EngineMetrics()
        self.pipeline = TutorPipeline(backends, self.store, settings, self.metrics)
        self.scheduler = TurnScheduler(settings.max_concurrent_turns)
        self.metrics.turns_running.set_function(lambda: self.scheduler.running)
        self.metrics.turns_waiting.set_function(lambda: self.scheduler.waiting)
        self.sessions = Sessions()
        self.parse_executor = ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="tutor-parse")
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
            state.parse_executor.shutdown(wait=False, cancel_futures=True)
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
        # Remembered first, so nothing still running can write its history again; then its
        # queued messages are dropped and its turns cancelled before the 204.
        state.store.end(session_id)
        await state.sessions.stop_turns(session_id)
        state.metrics.sessions.set(len(state.store))
        return Response(status_code=204)

    @app.websocket("/ws/{session_id}")
    async def conversation(websocket: WebSocket, session_id: str) -> None:
        if not state.ready:  # refused before the upgrade: the gateway waits and tries again
            reason = state.load_error or "models are still loading"
            await websocket.send_denial_response(
                JSONResponse({"detail": f"Engine not ready: {reason}"}, status_code=503)
            )
            return
        await websocket.accept()
        if not state.authorized(websocket.headers.get("x-engine-key")):
            await websocket.send_json(error_message("Invalid engine key"))
            await websocket.close(CLOSE_UNAUTHORIZED, "invalid engine key")
            return
        conv = Conversation(session_id, stream=_truthy(websocket.query_params.get("stream")))
        if kb_id := websocket.query_params.get("kb_id"):
            try:
                conv.kb_id = check_kb_id(kb_id)
            except KnowledgeError as exc:
                await websocket.send_json(error_message(f"{exc}; answering without it"))
        state.metrics.connections.inc()
        try:
            await Connection(websocket, conv, state).serve()
        except (WebSocketDisconnect, WebSocketDisconnected):
            pass  # the client left while we were sending
        finally:
            state.metrics.connections.dec()
            state.metrics.sessions.set(len(state.store))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    return app


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")
