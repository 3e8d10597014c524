"""Relaying one client WebSocket to its engine, frame for frame, both ways.

The client may send as soon as it is connected: frames wait while the engine starts, bounded
in bytes (``MAX_QUEUED_BYTES``); past the bound the gateway stops reading the client. The gateway
reads frames only to enforce the size limit and UTF-8; it never parses them. Frames in either
direction count as activity, and so does a reply the client is waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from .engines import EngineEndpoint, EngineRouter, EngineUnavailable
from .frames import (
    CLOSE_CLIENT_TOO_SLOW,
    CLOSE_ENGINE_UNAVAILABLE,
    CLOSE_INTERNAL_ERROR,
    error_frame,
)
from .inbox import FrameInbox
from .sessions import Session

log = logging.getLogger("tutor_gateway.relay")

Frame = str | bytes
ENGINE_LOST = "The tutor engine stopped unexpectedly; reconnect to continue"
INTERNAL = "The gateway hit an internal error; reconnect to continue"
# Engine close codes meaning "this engine is gone" (shutdown, restart, crash), not a verdict.
ENGINE_GONE_CODES = frozenset({1001, 1006, 1011, 1012})
# Engine frames the gateway reads ahead of a slow client (websockets' max_queue, in frames).
UPSTREAM_QUEUE_FRAMES = 2
CLOSE_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Ending:
    """How a relayed connection ends for the client: close code, reason, optional error text."""

    code: int
    reason: str
    error: str | None = None


@dataclass(frozen=True)
class RelayLimits:
    """The per-connection bounds (settings of the same names)."""

    max_message_bytes: int
    max_queued_bytes: int
    engine_wait_seconds: float
    engine_connect_timeout_seconds: float
    send_timeout_seconds: float
    activity_interval_seconds: float


class _Attempt(Enum):
    """An engine connection that ended without a verdict for the client."""

    UNREACHABLE = "unreachable"  # never got going (starting, busy, not ready): try again
    LOST = "lost"  # dropped while relaying


class ClientTooSlow(Exception):
    """A frame could not be handed to the client within the send timeout."""


def admit_frame(text: str | None, data: bytes | None, max_bytes: int) -> tuple[bytes, str | None]:
    """A client frame as bytes for the engine, or why it is refused (size, invalid UTF-8)."""
    if text is None:
        data = data or b""
        if len(data) > max_bytes:
            return b"", f"Message too large: {len(data)} bytes (limit {max_bytes})"
        return data, None
    if len(text) > max_bytes:  # a character is at least one byte
        return b"", f"Message too large: over {max_bytes} bytes (limit {max_bytes})"
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:  # the transport hands invalid UTF-8 on as lone surrogates
        return b"", "Text frames must be valid UTF-8"
    if len(encoded) > max_bytes:
        return b"", f"Message too large: {len(encoded)} bytes (limit {max_bytes})"
    return encoded, None


class Relay:
    """One client connection bridged to its session's engine until either side ends."""

    def __init__(
        self,
        client: WebSocket,
        session: Session,
        router: EngineRouter,
        limits: RelayLimits,
        on_activity: Callable[[], Awaitable[None]],
    ) -> None:
        self.client = client
        self.session = session
        self.router = router
        self.limits = limits
        self.on_activity = on_activity
        self._inbox = FrameInbox(limits.max_queued_bytes)
        self._terminated: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()
        self._send_lock = asyncio.Lock()
        self._active = False  # a frame passed since the last activity record
        self._awaiting_reply = False  # the client sent something the engine has not answered

    @property
    def _sid(self) -> str:
        return self.session.session_id[:8]

    def terminate(self, ending: Ending) -> None:
        """End this connection from outside (expiry, deletion, takeover, shutdown)."""
        if not self._terminated.done():
            self._terminated.set_result(ending)

    async def run(self) -> None:
        """Relay until the client leaves, the engine ends, or ``terminate`` is called."""
        tasks = [
            asyncio.create_task(self._read_client()),
            asyncio.create_task(self._bridge()),
            asyncio.create_task(self._record_activity()),
        ]
        bridge = tasks[1]
        try:
            done, _ = await asyncio.wait(
                {*tasks, self._terminated}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._inbox.clear()
        if self._terminated.done():
            await self._close(self._terminated.result())
        elif bridge in done and not bridge.cancelled():
            failure = bridge.exception()
            if failure is None:
                await self._close(bridge.result())
            elif not isinstance(failure, ClientTooSlow):
                log.error("session %s: relay failed", self._sid, exc_info=failure)
                await self._close(Ending(CLOSE_INTERNAL_ERROR, "internal error", INTERNAL))

    async def _send(self, frame: Frame | dict[str, object]) -> None:
        """Hand one frame to the client; one that is not taken in time ends the connection."""
        async with self._send_lock:
            try:
                async with asyncio.timeout(self.limits.send_timeout_seconds):
                    if isinstance(frame, dict):
                        await self.client.send_json(frame)
                    elif isinstance(frame, str):
                        await self.client.send_text(frame)
                    else:
                        await self.client.send_bytes(frame)
            except TimeoutError:
                log.warning(
                    "session %s: client took no data for %.0fs; closing it",
                    self._sid,
                    self.limits.send_timeout_seconds,
                )
                self.terminate(Ending(CLOSE_CLIENT_TOO_SLOW, "client too slow"))
                raise ClientTooSlow from None

    async def _close(self, ending: Ending) -> None:
        if self.client.client_state != WebSocketState.CONNECTED:
            return
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError, ClientTooSlow):
            if ending.error:
                await self._send(error_frame(ending.error))
        abort = self.client.scope.get("extensions", {}).get("tutor.close_now")
        if abort is not None:  # writes the close frame even into a full buffer, then ends it
            abort(ending.code, ending.reason)
            return
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError, TimeoutError):
            async with asyncio.timeout(CLOSE_GRACE_SECONDS):
                await self.client.close(ending.code, ending.reason)

    async def _read_client(self) -> None:
        """Queue the client's frames for the engine; answer refused ones with an error."""
        max_bytes = self.limits.max_message_bytes
        while True:
            message = await self.client.receive()
            if message["type"] == "websocket.disconnect":
                return
            data, problem = admit_frame(message.get("text"), message.get("bytes"), max_bytes)
            if problem is not None:
                log.info("session %s: frame refused: %s", self._sid, problem)
                await self._send(error_frame(problem))
                continue
            self._active = self._awaiting_reply = True
            await self._inbox.put(data, message.get("text") is not None)

    async def _record_activity(self) -> None:
        """Record activity at most once per interval while frames flow or a reply is due."""
        while True:
            await asyncio.sleep(self.limits.activity_interval_seconds)
            if self._active or self._awaiting_reply:
                self._active = False
                await self.on_activity()

    async def _bridge(self) -> Ending:
        """Find the engine, connect, and pump frames both ways; say how the client should close.

        An engine that cannot be reached yet (starting, briefly busy, not ready) is tried again
        until ``engine_wait_seconds`` have passed; one lost while relaying ends the connection.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.engine_wait_seconds
        delay = 0.1
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    endpoint = await self.router.endpoint(self.session)
            except (EngineUnavailable, TimeoutError) as exc:
                detail = str(exc) or f"not ready after {self.limits.engine_wait_seconds:.0f}s"
                log.warning("session %s: engine unavailable: %s", self._sid, detail)
                return Ending(
                    CLOSE_ENGINE_UNAVAILABLE,
                    "engine unavailable",
                    f"Tutor engine unavailable: {detail}",
                )
            outcome = await self._attempt(endpoint)
            if isinstance(outcome, Ending):
                return outcome
            self.router.report_failure(self.session, endpoint)
            if outcome is _Attempt.LOST:
                return Ending(CLOSE_ENGINE_UNAVAILABLE, "engine unavailable", ENGINE_LOST)
            if loop.time() + delay >= deadline:
                waited = self.limits.engine_wait_seconds
                return Ending(
                    CLOSE_ENGINE_UNAVAILABLE,
                    "engine unavailable",
                    f"Tutor engine unavailable: not reachable within {waited:.0f}s",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _attempt(self, endpoint: EngineEndpoint) -> Ending | _Attempt:
        """One connection to the engine, relayed until it ends."""
        try:
            async with connect(
                endpoint.websocket_url(self.session, self.client.query_params),
                additional_headers={"X-Engine-Key": endpoint.api_key},
                max_size=None,
                open_timeout=self.limits.engine_connect_timeout_seconds,
                max_queue=UPSTREAM_QUEUE_FRAMES,
                ping_interval=20,
                ping_timeout=20,
            ) as upstream:
                return await self._pump(upstream)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            log.warning("session %s: engine unreachable: %r", self._sid, exc)
            return _Attempt.UNREACHABLE

    async def _pump(self, upstream: ClientConnection) -> Ending | _Attempt:
        """Pump until one side stops; the engine's own close passes through."""

        async def to_engine() -> None:
            while True:
                data, text = await self._inbox.get()
                await upstream.send(data, text=text)

        async def to_client() -> None:
            async for frame in upstream:
                self._active, self._awaiting_reply = True, False
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
            log.warning("session %s: engine connection lost", self._sid)
            return _Attempt.LOST
        return Ending(close.code, close.reason)
