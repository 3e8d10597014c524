"""Relaying one client WebSocket to its engine, frame for frame, both ways.

The client may send as soon as it is connected: frames wait while the engine starts, bounded
in bytes (``MAX_QUEUED_BYTES``); past the bound the gateway stops reading the client. The gateway
reads client frames only to enforce the size limit and UTF-8; it never parses them. Frames in
either direction count as activity, and so does a reply the client is waiting for.

Failover: the gateway asks engines for receipts (``tutor_contract.relay``), consumes them, and
holds each frame sent until it is settled (within the same byte bound). When the engine goes
away (a dropped connection, or a close 1001/1006/1011/1012) the client's socket stays open: a
reply in flight ends with one ``error`` (``interrupted`` on a streaming connection), and the
session goes on on the engine the router gives next (the restarted process, another pod), in
the last streaming mode the engine reported, which first gets the frames the lost engine never
started. Only when no engine can be had within ``engine_wait_seconds`` of the loss does the
client get ``4503``, whose error names the engine's last known state.

Metrics: the relay counters and engine waits of ``GatewayMetrics``. Traces (only while tracing
is on): each client frame forwarded is a ``gateway.turn`` span (``_Turns``).

Idle sessions: a connection on which nothing has passed either way for
``engine_release_seconds``, with every frame settled and no audio stream open, gives its engine
connection up (a normal close); the client's socket stays open, and its next frame opens
another, where the last one left off (``tutor_contract.relay.resume_params``). An idle
student then holds no engine connection, no pump tasks and no engine-side state.

Cold start: a client that opted in gets ``status`` messages while it waits for an engine, at
the start and after a loss, and ``ready`` once its frames are relayed (``startup.StatusFeed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from tenacity import wait_exponential
from tutor_contract import tracing
from tutor_contract.crd import ENGINE_KEY_HEADER
from tutor_contract.relay import (
    RELAY_HEADER,
    RELAY_HELLO_HEADER,
    parse_receipt,
    resume_params,
    trace_frame,
)
from tutor_contract.tasks import cancel_and_wait
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from .engines import EngineEndpoint, EngineRouter, EngineUnavailable
from .frames import (
    CLOSE_CLIENT_TOO_SLOW,
    CLOSE_ENGINE_UNAVAILABLE,
    CLOSE_INTERNAL_ERROR,
    error_frame,
    interrupted_frame,
)
from .inbox import MAX_UNRECEIPTED_FRAMES, FrameInbox, Loss
from .metrics import CLIENT_TO_ENGINE, ENGINE_TO_CLIENT, WAIT_READY, WAIT_TIMEOUT, GatewayMetrics
from .retry import Backoff
from .sessions import Session
from .startup import StatusFeed, engine_state_of, unavailable_detail, wants_events

log = logging.getLogger("tutor_gateway.relay")

Frame = str | bytes
REPLY_CUT = "The tutor engine restarted; this message was not fully answered"
REPLY_MAYBE_CUT = "The tutor engine restarted; a message in progress may not have been answered"
INTERNAL = "The gateway hit an internal error; reconnect to continue"
# Engine close codes meaning "this engine is gone" (shutdown, restart, crash), not a verdict.
ENGINE_GONE_CODES = frozenset({1001, 1006, 1011, 1012})
# Engine frames the gateway reads ahead of a slow client (websockets' max_queue, in frames).
UPSTREAM_QUEUE_FRAMES = 2
CLOSE_GRACE_SECONDS = 5.0
# The ``type`` of a client's JSON message, if it comes first (only the frame's start is read).
_MESSAGE_TYPE = re.compile(rb'\A\s*\{\s*"type"\s*:\s*"([A-Za-z0-9_.-]{1,40})"')
_TYPE_PEEK_BYTES = 80


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
    engine_release_seconds: float = 0.0  # 0: an engine connection is never given up


@dataclass
class _Attempt:
    """An engine connection that ended without a verdict for the client."""

    opened_at: float | None = None  # None: never got going (starting, busy, not ready)
    heard: bool = False  # the engine sent a frame on it (a receipt or one for the client)


class _Released:
    """The engine connection was given up while the session was idle."""


@dataclass(frozen=True)
class _Failover:
    """A lost engine connection the session has not yet moved on from."""

    lost_at: float
    loss: Loss


class ClientTooSlow(Exception):
    """A frame could not be handed to the client within the send timeout."""


def connection_served(heard: bool, lasted: float, budget: float) -> bool:
    """Whether a lost engine connection had served the session: the engine sent a frame on it,
    or it lasted the start budget. The next engine is then sought at once, with a fresh budget;
    one that never served is retried like an unreachable engine, within the budget already
    running, so an engine that fails every connection still ends in 4503."""
    return heard or lasted >= budget


def loss_notice(loss: Loss) -> dict[str, object] | None:
    """What the client is told when its engine is lost: how the reply in flight ended."""
    if not loss.in_flight:
        return None
    if not loss.receipted:
        return error_frame(REPLY_MAYBE_CUT)
    return interrupted_frame(REPLY_CUT) if loss.streaming else error_frame(REPLY_CUT)


def message_type(data: bytes, text: bool) -> str | None:
    """The ``type`` a client text frame starts with (``{"type": "audio", ...``), if any."""
    if not text:
        return None
    found = _MESSAGE_TYPE.match(data[:_TYPE_PEEK_BYTES])
    return found.group(1).decode() if found else None


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
        metrics: GatewayMetrics | None = None,
        admit_message: Callable[[int | None], Awaitable[str | None]] | None = None,
    ) -> None:
        self.client = client
        self._admit_message = admit_message  # why a rate limit refuses a frame, or None
        self.session = session
        self.router = router
        self.limits = limits
        self.on_activity = on_activity
        self.metrics = metrics or GatewayMetrics()  # a registry of its own if none is given
        self._failover: _Failover | None = None
        self._inbox = FrameInbox(limits.max_queued_bytes)
        self._terminated: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()
        self._send_lock = asyncio.Lock()
        self._active = False  # a frame passed since the last activity record
        self._awaiting_reply = False  # the client sent something the engine has not answered
        self._wait_started: float | None = None  # loop time this wait for an engine began
        self._activity_timer: asyncio.TimerHandle | None = None
        self._recording: asyncio.Task[None] | None = None  # an activity record under way
        self._feed_task: asyncio.Task[None] | None = None  # only while waiting for an engine
        self._feed = StatusFeed(
            self._send,
            lambda: engine_state_of(router, session),
            enabled=wants_events(client.query_params.get("events")),
        )

    @property
    def _sid(self) -> str:
        return self.session.session_id[:8]

    def terminate(self, ending: Ending) -> None:
        """End this connection from outside (expiry, deletion, takeover, shutdown)."""
        if not self._terminated.done():
            self._terminated.set_result(ending)

    async def run(self) -> None:
        """Relay until the client leaves, the engine ends, or ``terminate`` is called."""
        reader = asyncio.create_task(self._read_client())
        bridge = asyncio.create_task(self._bridge())
        self._activity_due()  # starts the timer (nothing has flowed yet: no record)
        try:
            waiting: set[asyncio.Future[Any]] = {reader, bridge, self._terminated}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._unwatch()
            if self._activity_timer is not None:
                self._activity_timer.cancel()
            await cancel_and_wait([reader, bridge, self._recording])
            self._inbox.clear()
        if self._terminated.done():
            await self._close(self._terminated.result())
        elif bridge in done and not bridge.cancelled():
            failure = bridge.exception()
            if failure is None:
                await self._close(bridge.result())
            elif isinstance(failure, WebSocketDisconnect):
                # A frame for the client found it gone before its reader saw the disconnect.
                log.info("session %s: client left while a frame was sent to it", self._sid)
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
            text, binary = message.get("text"), message.get("bytes")
            problem = None
            if self._admit_message is not None:  # audio is counted in bytes
                problem = await self._admit_message(None if binary is None else len(binary))
            data, problem = (b"", problem) if problem else admit_frame(text, binary, max_bytes)
            if problem is not None:
                log.info("session %s: frame refused: %s", self._sid, problem)
                await self._send(error_frame(problem))
                continue
            if text is not None:
                self._feed.peek(text)  # the options opt-in, only while waiting
            self._active = self._awaiting_reply = True
            await self._inbox.put(data, text is not None)

    def _activity_due(self) -> None:
        """Each interval (a timer, not a task per connection): record activity if frames
        flowed or a reply is due, one record at a time."""
        loop = asyncio.get_running_loop()
        self._activity_timer = loop.call_later(
            self.limits.activity_interval_seconds, self._activity_due
        )
        if (self._active or self._awaiting_reply) and self._recording is None:
            self._active = False
            self._recording = asyncio.create_task(self._record_activity())

    async def _record_activity(self) -> None:
        try:
            await self.on_activity()
        except Exception:
            log.exception("session %s: activity not recorded", self._sid)
        finally:
            self._recording = None

    async def _bridge(self) -> Ending:
        """Find the engine, connect, and pump frames both ways, retrying an unreachable engine
        and failing over a lost one within ``engine_wait_seconds``; say how the client closes."""
        loop = asyncio.get_running_loop()
        budget = self.limits.engine_wait_seconds
        deadline = loop.time() + budget
        backoff = Backoff(wait_exponential(multiplier=0.1, max=2.0))
        self._watch(loop.time())
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    endpoint = await self.router.endpoint(self.session)
            except (EngineUnavailable, TimeoutError) as exc:
                return self._unavailable(str(exc) or f"not ready after {budget:.0f}s")
            outcome = await self._attempt(endpoint)
            if isinstance(outcome, Ending):
                return outcome
            if isinstance(outcome, _Released):
                await self._inbox.lost()  # all was settled; the next counts frames from 1
                await self._inbox.wait_queued()
                reopened = loop.time()
                self._watch(reopened, quiet=True)  # ``status`` only if the engine is not there
                deadline = reopened + budget
                backoff.reset()
                continue
            self.router.report_failure(self.session, endpoint)
            if outcome.opened_at is not None:
                lost_at = loop.time()
                await self._lost(lost_at)
                if connection_served(outcome.heard, lost_at - outcome.opened_at, budget):
                    deadline = lost_at + budget
                    backoff.reset()
                    continue
            delay = backoff.next()
            if loop.time() + delay >= deadline:
                return self._unavailable(f"not reachable within {budget:.0f}s")
            await asyncio.sleep(delay)

    async def _lost(self, lost_at: float) -> None:
        """The engine went away while relaying: end the reply in flight, keep the rest."""
        loss = await self._inbox.lost()
        self._failover = _Failover(lost_at, loss)
        self._watch(lost_at)
        notice = loss_notice(loss)
        if notice is not None:
            self._awaiting_reply = self._inbox.queued_bytes > 0  # the cut reply is answered
            await self._send(notice)

    def _watch(self, since: float, quiet: bool = False) -> None:
        """A wait for an engine began at ``since`` (loop time; ``engine_wait`` observes it):
        the status feed runs its task until it is over (an idle connected session holds no
        task for it); ``quiet``: no ``ready`` unless a ``status`` was sent meanwhile."""
        self._wait_started = since
        self._feed.wait_began(quiet)
        if self._feed_task is None:
            self._feed_task = asyncio.create_task(self._feed.run())

    def _unwatch(self) -> None:
        task, self._feed_task = self._feed_task, None
        if task is not None:
            task.cancel()

    def _wait_over(self, outcome: str) -> None:
        """The wait for an engine ended (its handshake, or 4503): observe it once."""
        started, self._wait_started = self._wait_started, None
        if started is not None:
            waited = asyncio.get_running_loop().time() - started
            self.metrics.engine_wait.labels(outcome).observe(waited)

    def _resumed(self, endpoint: EngineEndpoint) -> None:
        """A new engine connection is open: the failover, if one was under way, succeeded."""
        failover, self._failover = self._failover, None
        if failover is None:
            return
        self.metrics.failovers.labels("resumed").inc()
        log.warning(
            "session %s: engine lost; continued on %s after %.2fs "
            "(%d frames sent again, reply in flight cut: %s)",
            self._sid,
            endpoint.base_url,
            asyncio.get_running_loop().time() - failover.lost_at,
            len(failover.loss.replay),
            "yes" if failover.loss.in_flight else "no",
        )

    def _unavailable(self, detail: str) -> Ending:
        """No engine could be had in time: 4503 (a failover under way failed)."""
        self._wait_over(WAIT_TIMEOUT)
        failover, self._failover = self._failover, None
        if failover is None:
            log.warning("session %s: engine unavailable: %s", self._sid, detail)
        else:
            self.metrics.failovers.labels("unavailable").inc()
            log.warning(
                "session %s: engine lost; none available %.2fs later: %s",
                self._sid,
                asyncio.get_running_loop().time() - failover.lost_at,
                detail,
            )
        detail = unavailable_detail(detail, self._feed.current())
        return Ending(
            CLOSE_ENGINE_UNAVAILABLE, "engine unavailable", f"Tutor engine unavailable: {detail}"
        )

    def _engine_params(self) -> dict[str, str]:
        """The client's query options for the engine; on a connection after the first, where
        the last one left off (its mode, reply audio and reply ids: ``resume_params``)."""
        params = dict(self.client.query_params)
        if self._inbox.latest is not None:
            params |= resume_params(self._inbox.latest)
        return params

    async def _attempt(self, endpoint: EngineEndpoint) -> Ending | _Attempt | _Released:
        """One connection to the engine, relayed until it ends."""
        attempt = _Attempt()
        try:
            async with connect(
                endpoint.websocket_url(self.session, self._engine_params()),
                additional_headers={
                    ENGINE_KEY_HEADER: endpoint.api_key,
                    RELAY_HEADER: "1",
                    RELAY_HELLO_HEADER: "1",
                },
                max_size=None,
                compression=None,  # loopback / in-cluster: deflate only costs memory and CPU
                open_timeout=self.limits.engine_connect_timeout_seconds,
                max_queue=UPSTREAM_QUEUE_FRAMES,
                ping_interval=20,
                ping_timeout=20,
            ) as upstream:
                upstream.request = None  # the upgrade's headers, never read again (~1.5 KiB)
                attempt.opened_at = asyncio.get_running_loop().time()
                self._wait_over(WAIT_READY)
                self._resumed(endpoint)
                await self._feed.connected()  # ``ready``, before any frame of the engine's
                self._unwatch()
                return await self._pump(upstream, attempt)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            if attempt.opened_at is None:  # else it broke while relaying or closing: lost
                level = logging.DEBUG if self._failover else logging.WARNING
                log.log(level, "session %s: engine unreachable: %r", self._sid, exc)
            return attempt

    async def _pump(
        self, upstream: ClientConnection, attempt: _Attempt
    ) -> Ending | _Attempt | _Released:
        """Pump until one side stops, or the session has been idle for
        ``engine_release_seconds``; the engine's own close passes through, unless it means
        the engine is gone (``attempt`` is returned then)."""
        metrics = self.metrics
        turns = _Turns(self.session.tutor_id, self._sid) if tracing.enabled() else None
        loop = asyncio.get_running_loop()
        release = self.limits.engine_release_seconds
        quiet_since = loop.time()  # of the last frame either way, or of the last idle check

        async def next_frame() -> tuple[bytes, bool] | None:
            """The next frame for the engine; None once the connection may be given up."""
            nonlocal quiet_since
            while release > 0:
                try:
                    async with asyncio.timeout_at(quiet_since + release):
                        return await self._inbox.get()
                except TimeoutError:  # the frame, if one just came, is still queued
                    if loop.time() < quiet_since + release:
                        continue  # the engine sent something meanwhile
                    if self._inbox.releasable:
                        return None
                    quiet_since = loop.time()  # a reply or an audio stream: look again later
            return await self._inbox.get()

        async def to_engine() -> None:
            nonlocal quiet_since
            while (frame := await next_frame()) is not None:
                data, text = frame
                quiet_since = loop.time()
                if turns is not None:  # the engine makes its turn a child of this one
                    await upstream.send(turns.begin(data, text))
                await upstream.send(data, text=text)
                metrics.relayed(CLIENT_TO_ENGINE, len(data))

        async def to_client() -> None:
            nonlocal quiet_since
            async for frame in upstream:
                quiet_since = loop.time()
                attempt.heard = True
                receipt = parse_receipt(frame)
                if receipt is not None:
                    await self._inbox.settle(receipt)
                    if turns is not None and not receipt.started:
                        turns.end(receipt.seq)
                    continue
                self._active, self._awaiting_reply = True, False
                await self._send(frame)
                size = len(frame) if isinstance(frame, bytes) else len(frame.encode())
                metrics.relayed(ENGINE_TO_CLIENT, size)

        forward, backward = asyncio.create_task(to_engine()), asyncio.create_task(to_client())
        try:
            await asyncio.wait({forward, backward}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait([forward, backward])
            if turns is not None:
                turns.end_all()
        for task in (forward, backward):
            exc = None if task.cancelled() else task.exception()
            if exc is not None and not isinstance(exc, ConnectionClosed):
                raise exc
        close = upstream.protocol.close_rcvd
        if close is not None and close.code not in ENGINE_GONE_CODES:
            return Ending(close.code, close.reason)
        if forward.done() and not forward.cancelled() and forward.exception() is None:
            # to_engine returns only to give the connection up
            metrics.engine_releases.inc()
            log.debug("session %s: idle for %.0fs; engine connection given up", self._sid, release)
            return _Released()
        return attempt


class _Turns:
    """The ``gateway.turn`` spans of one engine connection, by the number the engine gives
    each frame (1, 2, 3, … as sent; trace frames are not numbered)."""

    def __init__(self, tutor_id: int, short_id: str) -> None:
        self.tracer = tracing.tracer(__name__)  # the provider installed now
        self.attributes: dict[str, str | int] = {"tutor.id": tutor_id, "session.id": short_id}
        self.spans: dict[int, trace.Span] = {}
        self.sent = 0

    def begin(self, data: bytes, text: bool) -> str:
        """Start the span of the next frame; the trace frame to send right before it."""
        self.sent += 1
        attributes = dict(self.attributes)
        kind = message_type(data, text)
        if kind is not None:
            attributes["message.type"] = kind
        span = self.tracer.start_span("gateway.turn", attributes=attributes)
        self.spans[self.sent] = span
        if len(self.spans) > MAX_UNRECEIPTED_FRAMES:  # an engine that sends no receipts
            self.spans.pop(next(iter(self.spans))).end()
        return trace_frame(tracing.inject(trace.set_span_in_context(span)))

    def end(self, seq: int) -> None:
        """Frame ``seq`` is settled (its ``done`` receipt)."""
        span = self.spans.pop(seq, None)
        if span is not None:
            span.end()

    def end_all(self) -> None:
        """The connection ended: every span still open ends with it."""
        for span in self.spans.values():
            span.set_attribute("relay.settled", False)
            span.end()
        self.spans.clear()
