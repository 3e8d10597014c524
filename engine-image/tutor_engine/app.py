"""The engine's HTTP and WebSocket server (FastAPI).

``/ws/{session_id}`` speaks the seed's conversation protocol (served by ``connection``);
``/healthz`` says the process is alive, ``/readyz`` that every model is loaded (and the engine
is not draining); ``/metrics`` is Prometheus text; ``DELETE /sessions/{id}`` ends a session: its
turns are cancelled and its history deleted for good, on every engine sharing the store.
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

from fastapi import FastAPI, Header, HTTPException, Path, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BeforeValidator
from starlette.websockets import WebSocketDisconnected
from tutor_contract import logs, tracing
from tutor_contract.relay import MAX_REPLY_ID, RELAY_HEADER, RELAY_HELLO_HEADER
from tutor_contract.tasks import cancel_and_wait

from .backends import Backend, Backends, build_backends
from .config import EngineSettings
from .connection import Connection, Sessions
from .history import GuardedHistory, HistoryUnavailable, open_store
from .knowledge import KnowledgeError, check_kb_id
from .metrics import EngineMetrics
from .pipeline import Conversation, TutorPipeline
from .protocol import ProtocolError, error_message, query_audio
from .scheduling import TurnScheduler

log = logging.getLogger("tutor_engine")

# WebSocket close codes (documented in the README).
CLOSE_UNAUTHORIZED = 4401
PARSE_THREADS = 2  # large frames parsed at once, engine-wide (each connection parses in order)
SESSION_ID = Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
# ?stream=1: on for 1, true, yes, on (any case), off for anything else, never an error.
OPT_IN = BeforeValidator(lambda value: str(value).lower() in ("1", "true", "yes", "on"))


class EngineState:
    """Everything one engine app holds: settings, backends, history, readiness, draining."""

    def __init__(
        self,
        settings: EngineSettings,
        backends: Backends,
        on_load_failure: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_load_failure = on_load_failure
        self.backends = backends
        self.metrics = EngineMetrics(settings.tutor_id)
        self.history = GuardedHistory(
            open_store(settings),
            settings.history_timeout_seconds,
            self.metrics.history_errors,
            self.metrics.history_seconds,
        )
        self.pipeline = TutorPipeline(backends, self.history, settings, self.metrics)
        self.scheduler = TurnScheduler(settings.max_concurrent_turns)
        self.metrics.turns_running.set_function(lambda: self.scheduler.running)
        self.metrics.turns_waiting.set_function(lambda: self.scheduler.waiting)
        self.sessions = Sessions()
        self.metrics.sessions.set_function(lambda: len(self.sessions))
        self.draining = False
        self.parse_executor = ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="tutor-parse")
        self.ready = False
        self.load_error: str | None = None
        self.loaded = {b.name: False for b in backends.all()}

    async def load(self) -> None:
        """Load and warm every backend at once; record failures instead of raising."""
        started = time.perf_counter()
        results = await asyncio.gather(
            *(self._load_one(model, b) for model, b in self.backends.models()),
            return_exceptions=True,
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

    async def _load_one(self, model: str, backend: Backend) -> None:
        started = time.perf_counter()
        try:
            await backend.load()
        except Exception as exc:
            log.exception("loading %s failed", backend.name)
            raise RuntimeError(f"{backend.name}: {type(exc).__name__}: {exc}") from exc
        took = time.perf_counter() - started
        self.loaded[backend.name] = True
        self.metrics.model_load_seconds.labels(model).set(took)
        log.info("loaded %s in %.2fs", backend.name, took)

    def load_problem(self) -> str | None:
        """What a model still loading is waiting on, in its backend's words (e.g. ``LLM server
        http://vllm:8000 unreachable: connection refused``), or the load failure; ``None``
        while loading simply takes its time."""
        if self.load_error:
            return self.load_error
        problems = [
            problem
            for backend in self.backends.all()
            if not self.loaded.get(backend.name) and (problem := getattr(backend, "problem", None))
        ]
        return "; ".join(problems) or None

    def not_ready_reason(self) -> str | None:
        """Why new sessions are refused (``None``: they are taken)."""
        if self.draining:
            return "draining"
        if not self.ready:
            if self.load_error:
                return self.load_error
            problem = self.load_problem()
            return f"models are still loading: {problem}" if problem else "models are still loading"
        return None

    async def drain(self) -> None:
        """Stop taking sessions; let turns in flight finish within ``drain_seconds``; then
        close every WebSocket with 1012. Returns when all are closed."""
        if self.draining:
            return
        self.draining = True
        self.metrics.ready.set(0)
        connections = self.sessions.connections()
        log.info(
            "draining: %d connections, turns in flight get up to %.0fs",
            len(connections),
            self.settings.drain_seconds,
        )
        deadline = asyncio.get_running_loop().time() + self.settings.drain_seconds
        await asyncio.gather(*(c.restart(deadline) for c in connections))
        log.info("drained")

    def authorized(self, key: str | None) -> bool:
        """Whether a caller presented the shared engine key (always, if none is configured)."""
        expected = self.settings.api_key
        return not expected or hmac.compare_digest((key or "").encode(), expected.encode())


async def _purge_history(state: EngineState) -> None:
    """Delete expired history now and then (stores that do not expire it by themselves)."""
    interval = min(60.0, state.settings.session_ttl_seconds / 4)
    while True:
        await asyncio.sleep(interval)
        with contextlib.suppress(HistoryUnavailable):  # counted and logged by the guard
            if purged := await state.history.purge():
                log.info("purged %d expired history entries", purged)


def _apply_query(
    conv: Conversation, kb_id: str | None, audio_format: str | None, sample_rate: str | None
) -> list[str]:
    """Set up a connection's conversation from its query; what could not be used, in words."""
    problems = []
    try:
        fmt, rate = query_audio(audio_format, sample_rate)
    except ProtocolError as exc:
        problems.append(f"{exc}; replying with WAV audio")
    else:
        conv.audio_format, conv.sample_rate = fmt or conv.audio_format, rate or conv.sample_rate
    if kb_id:
        try:
            conv.kb_id = check_kb_id(kb_id)
        except KnowledgeError as exc:
            problems.append(f"{exc}; answering without it")
    return problems


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
        tasks = [asyncio.create_task(state.load()), asyncio.create_task(_purge_history(state))]
        try:
            yield
        finally:
            await cancel_and_wait(tasks)
            state.parse_executor.shutdown(wait=False, cancel_futures=True)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(state.settings.history_timeout_seconds):
                    await state.history.store.close()
            for backend in state.backends.all():
                with contextlib.suppress(Exception):
                    await backend.close()

    app = FastAPI(
        title="tutor-serving engine",
        version="0.1.0",
        lifespan=lifespan,
        **tracing.fastapi_options(),
    )
    app.state.engine = state

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "tutor_id": settings.tutor_id}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        # Readiness is about the models (and draining), never the history store: a store
        # outage costs history, not answers.
        reason = state.not_ready_reason()
        body = {
            "ready": reason is None,
            "tutor_id": settings.tutor_id,
            "backends": dict(state.loaded),
            "error": state.load_error,
            "reason": reason,
            "problem": None if reason is None else state.load_problem(),
            "history": state.history.state(),
        }
        return JSONResponse(body, status_code=200 if reason is None else 503)

    @app.delete("/sessions/{session_id}", status_code=204)
    async def drop_session(
        session_id: Annotated[str, SESSION_ID],
        x_engine_key: Annotated[str | None, Header()] = None,
    ) -> Response:
        if not state.authorized(x_engine_key):
            raise HTTPException(401, "Invalid engine key")
        # Tombstoned first, so nothing still running (here or on another engine) can write
        # its history again; then its queued messages are dropped and its turns cancelled.
        try:
            await state.history.end(session_id)
        except HistoryUnavailable:
            await state.sessions.stop_turns(session_id)
            raise HTTPException(
                503, "History store unavailable: the session's history expires with its TTL"
            ) from None
        await state.sessions.stop_turns(session_id)
        return Response(status_code=204)

    @app.websocket("/ws/{session_id}")
    async def conversation(
        websocket: WebSocket,
        session_id: str,
        stream: Annotated[bool, Query(), OPT_IN] = False,
        audio_format: str | None = None,
        sample_rate: str | None = None,
        reply_base: Annotated[int | None, Query(ge=0, le=MAX_REPLY_ID)] = None,
    ) -> None:
        # Every line logged for this connection (its turns included) names the session; the
        # connection's task, and with it the binding, ends with the connection.
        logs.bind(session=session_id)
        # Refused before the upgrade: the gateway waits and tries again (or another engine).
        if (reason := state.not_ready_reason()) is not None:
            await websocket.send_denial_response(
                JSONResponse({"detail": f"Engine not ready: {reason}"}, status_code=503)
            )
            return
        await websocket.accept()
        if not state.authorized(websocket.headers.get("x-engine-key")):
            await websocket.send_json(error_message("Invalid engine key"))
            await websocket.close(CLOSE_UNAUTHORIZED, "invalid engine key")
            return
        conv = Conversation(session_id, stream=stream, replies=reply_base or 0)
        problems = _apply_query(
            conv, websocket.query_params.get("kb_id"), audio_format, sample_rate
        )
        if reply_base is None:  # else the gateway continues a connection already told
            for problem in problems:
                await websocket.send_json(error_message(problem))
        relay = websocket.headers.get(RELAY_HEADER) == "1"
        hello = relay and websocket.headers.get(RELAY_HELLO_HEADER) == "1"
        state.metrics.connections.inc()
        try:
            await Connection(websocket, conv, state, relay=relay, hello=hello).serve()
        except (WebSocketDisconnect, WebSocketDisconnected):
            pass  # the client left while we were sending
        finally:
            state.metrics.connections.dec()

    return app
