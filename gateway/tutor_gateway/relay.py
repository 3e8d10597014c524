"""Relaying one client WebSocket to its engine, frame for frame, both ways.

The client may send as soon as it is connected: frames wait (bounded) while the engine starts.
The gateway reads frames only to enforce the size limit; it never parses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from .engines import EngineRouter, EngineUnavailable
from .frames import CLOSE_ENGINE_UNAVAILABLE, CLOSE_INTERNAL_ERROR, error_frame
from .sessions import Session

log = logging.getLogger("tutor_gateway.relay")

Frame = str | bytes
ENGINE_LOST = "The tutor engine stopped unexpectedly; reconnect to continue"
INTERNAL = "The gateway hit an internal error; reconnect to continue"
# Engine close codes meaning "this engine is gone" (shutdown, restart, crash), not a verdict.
ENGINE_GONE_CODES = frozenset({1001, 1006, 1011, 1012})


@dataclass(frozen=True)
class Ending:
    """How a relayed connection ends for the client: close code, reason, optional error text."""

    code: int
    reason: str
    error: str | None = None


class Relay:
    """One client connection bridged to its session's engine until either side ends."""

    def __init__(
        self,
        client: WebSocket,
        session: Session,
        router: EngineRouter,
        *,
        max_message_bytes: int,
        engine_wait_seconds: float,
        on_activity: Callable[[], Awaitable[None]],
        queue_size: int = 64,
    ) -> None:
        self.client = client
        self.session = session
        self.router = router
        self.max_message_bytes = max_message_bytes
        self.engine_wait_seconds = engine_wait_seconds
        self.on_activity = on_activity
        self._inbox: asyncio.Queue[Frame] = asyncio.Queue(maxsize=queue_size)
        self._terminated: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()
        self._send_lock = asyncio.Lock()

    def terminate(self, ending: Ending) -> None:
        """End this connection from outside (expiry, deletion, shutdown)."""
        if not self._terminated.done():
            self._terminated.set_result(ending)

    async def run(self) -> None:
        """Relay until the client leaves, the engine ends, or ``terminate`` is called."""
        reader = asyncio.create_task(self._read_client())
        bridge = asyncio.create_task(self._bridge())
        waiters: set[asyncio.Future[object]] = {reader, bridge, self._terminated}  # type: ignore[arg-type]
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, bridge):
                task.cancel()
            await asyncio.gather(reader, bridge, return_exceptions=True)
        if self._terminated.done():
            await self._close(self._terminated.result())
        elif bridge in done and not bridge.cancelled():
            failure = bridge.exception()
            if failure is None:
                await self._close(bridge.result())
            else:
                log.error("session %s: relay failed", self.session.session_id[:8], exc_info=failure)
                await self._close(Ending(CLOSE_INTERNAL_ERROR, "internal error", INTERNAL))

    async def _send(self, frame: Frame | dict[str, object]) -> None:
        async with self._send_lock:
            if isinstance(frame, dict):
                await self.client.send_json(frame)
            elif isinstance(frame, str):
                await self.client.send_text(frame)
            else:
                await self.client.send_bytes(frame)

    async def _close(self, ending: Ending) -> None:
        if self.client.client_state != WebSocketState.CONNECTED:
            return
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
            if ending.error:
                await self._send(error_frame(ending.error))
            await self.client.close(ending.code, ending.reason)

    async def _read_client(self) -> None:
        """Queue the client's frames for the engine; answer oversized ones with an error."""
        while True:
            message = await self.client.receive()
            if message["type"] == "websocket.disconnect":
                return
            frame: Frame | None = message.get("text")
            if frame is None:
                frame = message.get("bytes") or b""
            size = len(frame.encode("utf-8")) if isinstance(frame, str) else len(frame)
            if size > self.max_message_bytes:
                await self._send(
                    error_frame(f"Message too large: {size} bytes (limit {self.max_message_bytes})")
                )
                continue
            await self.on_activity()
            await self._inbox.put(frame)

    async def _bridge(self) -> Ending:
        """Find the engine, connect, and pump frames both ways; say how the client should close."""
        try:
            endpoint = await asyncio.wait_for(
                self.router.endpoint(self.session), self.engine_wait_seconds
            )
        except (EngineUnavailable, TimeoutError) as exc:
            detail = str(exc) or f"not ready after {self.engine_wait_seconds:.0f}s"
            log.warning("session %s: engine unavailable: %s", self.session.session_id[:8], detail)
            return Ending(
                CLOSE_ENGINE_UNAVAILABLE,
                "engine unavailable",
                f"Tutor engine unavailable: {detail}",
            )
        try:
            async with connect(
                endpoint.websocket_url(self.session, self.client.query_params),
                additional_headers={"X-Engine-Key": endpoint.api_key},
                max_size=None,
                open_timeout=10,
                ping_interval=20,
                ping_timeout=20,
            ) as upstream:
                ending = await self._pump(upstream)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            log.warning("session %s: engine unreachable: %r", self.session.session_id[:8], exc)
            ending = None
        if ending is None:
            self.router.report_failure(self.session, endpoint)
            return Ending(CLOSE_ENGINE_UNAVAILABLE, "engine unavailable", ENGINE_LOST)
        return ending

    async def _pump(self, upstream: ClientConnection) -> Ending | None:
        """Pump until one side stops; the engine's own close passes through, None if it was lost."""

        async def to_engine() -> None:
            while True:
                await upstream.send(await self._inbox.get())

        async def to_client() -> None:
            async for frame in upstream:
                await self._send(frame)

        forward, backward = asyncio.create_task(to_engine()), asyncio.create_task(to_client())
        try:
            await asyncio.wait({forward, backward}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            forward.cancel()
            backward.cancel()
            await asyncio.gather(forward, backward, return_exceptions=True)
        for task in (forward, backward):
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                if not isinstance(exc, ConnectionClosed):
                    raise exc  # type: ignore[misc]
        close = upstream.protocol.close_rcvd
        if close is None or close.code in ENGINE_GONE_CODES:
            log.warning("session %s: engine connection lost", self.session.session_id[:8])
            return None
        return Ending(close.code, close.reason)
