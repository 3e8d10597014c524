"""The local mode's engines: one engine process per tutor on 127.0.0.1, started on demand."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx
from tenacity import wait_exponential
from tutor_contract.crd import ACTIVE, CRASHING, LOADING, MODEL_LOAD_FAILED, PENDING, STARTING
from tutor_contract.tasks import cancel_and_wait

from ..config import ENGINE_STOP_SECONDS
from ..engines import EngineEndpoint, EngineUnavailable, end_on_engine
from ..policy import engine_is_dead, idle_engines
from ..retry import Backoff
from ..sessions import Session
from ..startup import LOCAL_READY, NOT_STARTED_STATE, EngineState
from .registry import EngineRegistry, parent_link

log = logging.getLogger("tutor_gateway.engines")

RELEASE_TIMEOUT = 3.0  # seconds for an engine to answer DELETE /sessions/{id}
# A health check refused or reset waits this long for the process to exit (a killed engine's
# socket closes a moment before its exit is reaped), so that it is replaced at once.
EXIT_WAIT_SECONDS = 1.0


@dataclass
class LocalEngine:
    """One engine process on 127.0.0.1 serving one tutor."""

    tutor_id: int
    port: int
    process: asyncio.subprocess.Process
    suspect: bool = False
    failing_since: float | None = None  # first failed check since it last answered

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


class LocalEngines:
    """Starts one engine process per tutor on demand and stops it when idle (embedded mode).

    A start belongs to no connection: whoever asks while it runs waits for the same start, and
    one who leaves does not cancel it. An engine that fails a connection is re-checked before
    reuse and replaced only when its process is gone or its health checks have failed for
    ``liveness_timeout`` seconds: a busy engine is not a dead one.
    """

    def __init__(
        self,
        api_key: str,
        start_timeout: float,
        idle_timeout: float,
        command: str = "",
        clock: Callable[[], float] = time.monotonic,
        liveness_timeout: float = 30.0,
        registry: EngineRegistry | None = None,
        engine_env: Mapping[str, str] | None = None,
        max_concurrent_starts: int | None = None,
    ) -> None:
        self.api_key = api_key
        self.start_timeout = start_timeout
        self.idle_timeout = idle_timeout
        self.liveness_timeout = liveness_timeout
        self.command = shlex.split(command) if command else [sys.executable, "-m", "tutor_engine"]
        self._clock = clock
        self._engines: dict[int, LocalEngine] = {}  # ready engines
        self._starting: dict[int, asyncio.Task[LocalEngine]] = {}
        self._idle_since: dict[int, float] = {}
        self._http = httpx.AsyncClient(timeout=5.0)
        self.registry = registry or EngineRegistry(None)  # records engines in STATE_DIR
        self.engine_env = dict(engine_env or {})  # defaults; the gateway's environment wins
        # MAX_CONCURRENT_COLD_STARTS: starts past it wait their turn, first come first served.
        self.max_concurrent_starts = max_concurrent_starts
        self._start_slots = asyncio.BoundedSemaphore(max_concurrent_starts or 1_000_000)
        self._states: dict[int, EngineState] = {}  # what a start saw last, by tutor (startup.py)

    @property
    def running(self) -> dict[int, LocalEngine]:
        """Live engines by tutor id."""
        return {t: e for t, e in self._engines.items() if e.alive}

    async def endpoint(self, session: Session) -> EngineEndpoint:
        engine = await self.ensure(session.tutor_id)
        return EngineEndpoint(engine.base_url, self.api_key)

    def engine_state(self, session: Session) -> EngineState:
        """The session's engine as its start saw it: starting (no answer yet), loading (``/readyz``
        503 and its reason), ready, or why the last start failed; ``NotStarted`` without one."""
        tutor_id = session.tutor_id
        engine = self._engines.get(tutor_id)
        state = self._states.get(tutor_id)
        if engine is not None and engine.alive and state is not None and state.ready:
            return state
        if tutor_id in self._starting:
            return state or EngineState(PENDING, STARTING, "starting the engine process")
        if state is not None and not state.ready:
            return state  # the last start failed; the next connection tries again
        return NOT_STARTED_STATE

    def _note(self, tutor_id: int, phase: str, reason: str, message: str) -> None:
        """Record a start's progress; ``since`` moves only when the phase does."""
        old = self._states.get(tutor_id)
        since = old.since if old is not None and old.phase == phase else time.time()
        self._states[tutor_id] = EngineState(phase, reason, message, since)

    async def ensure(self, tutor_id: int) -> LocalEngine:
        """The tutor's ready engine, started (and waited for) if it is not running."""
        engine = self._engines.get(tutor_id)
        if engine is not None and (engine.suspect or not engine.alive):
            engine = await self._recheck(engine)
        if engine is None:
            task = self._starting.get(tutor_id)
            if task is None:
                task = asyncio.create_task(self._start(tutor_id))
                self._starting[tutor_id] = task
                task.add_done_callback(lambda done: self._started(tutor_id, done))
            engine = await asyncio.shield(task)
        self._idle_since.pop(tutor_id, None)
        return engine

    def _started(self, tutor_id: int, task: asyncio.Task[LocalEngine]) -> None:
        if self._starting.get(tutor_id) is task:
            del self._starting[tutor_id]
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have left

    async def _recheck(self, engine: LocalEngine) -> LocalEngine | None:
        """The engine if it should still be used; None once it is stopped as dead."""
        if await self._healthy(engine):
            return engine
        now = self._clock()
        if engine.failing_since is None:
            engine.failing_since = now
        if engine_is_dead(engine.alive, engine.failing_since, now, self.liveness_timeout):
            if engine.alive:
                log.warning(
                    "engine for tutor %s failed its health checks for %.0fs; replacing it",
                    engine.tutor_id,
                    now - engine.failing_since,
                )
            else:
                log.warning(
                    "engine for tutor %s exited (code %s)",
                    engine.tutor_id,
                    engine.process.returncode,
                )
            await self._stop(engine)
            return None
        return engine

    async def release(self, session: Session) -> None:
        """Have a deleted or expired session's engine, if running, drop its history: best
        effort, within RELEASE_TIMEOUT seconds (the history store's TTL covers the rest)."""
        engine = self.running.get(session.tutor_id)
        if engine is None:
            return
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):
                problem = await end_on_engine(
                    self._http, engine.base_url, session.session_id, self.api_key
                )
        except TimeoutError:
            problem = f"no answer within {RELEASE_TIMEOUT}s"
        if problem is not None:
            log.warning(
                "engine for tutor %s did not drop session %s: %s",
                session.tutor_id,
                session.session_id[:8],
                problem,
            )

    def report_failure(self, session: Session, endpoint: EngineEndpoint) -> None:
        """Mark the engine suspect: the next ``ensure`` checks it before reusing it."""
        engine = self._engines.get(session.tutor_id)
        if engine is not None and engine.base_url == endpoint.base_url:
            engine.suspect = True
            if engine.failing_since is None:
                engine.failing_since = self._clock()

    async def _healthy(self, engine: LocalEngine) -> bool:
        """One liveness check; a pass clears the engine's failure record."""
        if not engine.alive:
            return False
        try:
            response = await self._http.get(f"{engine.base_url}/healthz", timeout=2.0)
        except httpx.TimeoutException:  # busy, or stopped: not dead yet
            return False
        except httpx.HTTPError:  # refused or reset: its socket dies with its process
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(engine.process.wait(), EXIT_WAIT_SECONDS)
            return False
        if response.status_code != 200:
            return False
        engine.suspect, engine.failing_since = False, None
        return True

    async def _start(self, tutor_id: int) -> LocalEngine:
        """Start the tutor's engine once a start slot is free (MAX_CONCURRENT_COLD_STARTS)."""
        if self._start_slots.locked():
            log.info(
                "engine start for tutor %s waits: %d starts under way (MAX_CONCURRENT_COLD_STARTS)",
                tutor_id,
                self.max_concurrent_starts,
            )
            self._note(tutor_id, PENDING, STARTING, "waiting for a free start slot")
        async with self._start_slots:
            return await self._spawn(tutor_id)

    async def _spawn(self, tutor_id: int) -> LocalEngine:
        listener = socket.create_server(("127.0.0.1", 0))
        # Inherited by the engine's accepted sockets: uvicorn takes an inherited fd as AF_UNIX,
        # so asyncio never sets TCP_NODELAY on them, and Nagle then holds each reply frame
        # sent right behind a receipt until the gateway's delayed ACK (~40 ms per turn).
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        port = listener.getsockname()[1]
        env = {
            **self.engine_env,
            # Not the management API keys: an engine has no use for them.
            **{k: v for k, v in os.environ.items() if not k.startswith("MANAGEMENT_API_KEY")},
            "ENGINE_TUTOR_ID": str(tutor_id),
            "ENGINE_API_KEY": self.api_key,
        }
        argv = [
            *self.command,
            "--fd",
            str(listener.fileno()),
            *parent_link().engine_args(),  # the engine exits when this gateway dies
        ]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                pass_fds=(listener.fileno(), *parent_link().pass_fds),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            listener.close()
        self.registry.add(process.pid, tutor_id, port, argv)
        engine = LocalEngine(tutor_id, port, process)
        self._states.pop(tutor_id, None)
        self._note(tutor_id, PENDING, STARTING, f"engine process {process.pid} started")
        log.info("started engine for tutor %s (pid %s, port %s)", tutor_id, process.pid, port)
        try:
            await asyncio.wait_for(self._wait_ready(engine), self.start_timeout)
        except (TimeoutError, EngineUnavailable) as exc:
            await self._stop(engine)
            last = self._states.get(tutor_id)
            reason = str(exc) or f"not ready within {self.start_timeout:.0f}s" + (
                f": {last.message}" if last is not None and last.reason == LOADING else ""
            )
            if isinstance(exc, EngineUnavailable):
                failed = CRASHING if "process exited" in reason else MODEL_LOAD_FAILED
            else:
                failed = last.reason if last is not None else STARTING
            self._note(tutor_id, PENDING, failed, reason)
            raise EngineUnavailable(
                f"Engine for tutor {tutor_id} failed to start: {reason}"
            ) from exc
        except BaseException:  # cancelled by shutdown: never leave the process behind
            await self._stop(engine)
            raise
        self._engines[tutor_id] = engine
        return engine

    async def _wait_ready(self, engine: LocalEngine) -> None:
        backoff = Backoff(wait_exponential(multiplier=0.05, max=0.5))
        while True:
            if not engine.alive:
                raise EngineUnavailable(f"process exited with code {engine.process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                response = await self._http.get(f"{engine.base_url}/readyz")
                if response.status_code == 200:
                    log.info("engine for tutor %s is ready", engine.tutor_id)
                    self._note(engine.tutor_id, ACTIVE, LOCAL_READY, "engine ready")
                    return
                body = response.json()
                if body.get("error"):
                    raise EngineUnavailable(body["error"])
                reason = body.get("reason") or "models are still loading"
                self._note(engine.tutor_id, PENDING, LOADING, reason)
            await asyncio.sleep(backoff.next())

    async def stop_idle(self, busy_tutors: set[int]) -> list[int]:
        """Stop engines that have had no sessions for the idle timeout; return their tutors."""
        for tutor in [t for t, e in self._engines.items() if not e.alive]:
            engine = self._engines.pop(tutor)
            log.warning("engine for tutor %s exited (code %s)", tutor, engine.process.returncode)
        decision = idle_engines(
            list(self._engines), self._idle_since, busy_tutors, self._clock(), self.idle_timeout
        )
        self._idle_since = decision.idle_since
        for tutor in decision.stop:
            log.info("stopping idle engine for tutor %s", tutor)
            await self._stop(self._engines.pop(tutor))
        return decision.stop

    async def _stop(self, engine: LocalEngine, grace: float = ENGINE_STOP_SECONDS) -> None:
        if engine.alive:
            engine.process.terminate()
            try:
                await asyncio.wait_for(engine.process.wait(), grace)
            except TimeoutError:
                engine.process.kill()
                await engine.process.wait()
        self.registry.remove(engine.process.pid)
        if self._engines.get(engine.tutor_id) is engine:
            self._engines.pop(engine.tutor_id)

    async def close(self) -> None:
        """Stop every engine, started or starting (gateway shutdown)."""
        await cancel_and_wait(list(self._starting.values()))
        await asyncio.gather(*(self._stop(e) for e in list(self._engines.values())))
        await self._http.aclose()
