"""One client WebSocket: read every frame at once, answer turns in order, bound what waits.

The reader never stops reading while a turn runs: each frame is parsed (frames over
``LARGE_FRAME_CHARS`` in a small thread pool, off the event loop) and then

- rejected with an ``error`` (one log line, no traceback) if it is bad, if the session has
  ended, or if ``max_pending_turns`` of the session's messages are already waiting;
- on a plain connection, queued: a worker answers queued messages one after another, so
  replies come in order with exactly the seed's messages;
- on a streaming connection, it replaces what is queued and interrupts the reply in flight
  (barge-in: ``interrupted``, then the new turn).

Every turn runs inside the engine's ``TurnScheduler``: one turn at a time per session, and
``max_concurrent_turns`` engine-wide, granted first come, first served.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import WebSocket, WebSocketDisconnect

from .backends import AudioDecodeError
from .pipeline import Conversation
from .protocol import (
    INVALID_UTF8,
    LARGE_FRAME_CHARS,
    AudioIn,
    OptionsIn,
    ProtocolError,
    TextIn,
    error_message,
    interrupted_message,
    options_message,
    parse_client_frame,
)
from .transport import INVALID_UTF8 as INVALID_UTF8_EVENT

if TYPE_CHECKING:
    from .app import EngineState

log = logging.getLogger("tutor_engine")

SESSION_ENDED = "This session has ended; the message was not answered"
Message = TextIn | AudioIn | OptionsIn


def one_line(text: str, limit: int = 300) -> str:
    """Client-influenced text made safe for a single log line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


@dataclass
class SessionEntry:
    """What the engine holds for one session id: its open connections and unfinished messages."""

    session_id: str
    connections: set[Connection] = field(default_factory=set)
    active: int = 0  # messages accepted and not yet answered, over all its connections


@dataclass
class _Item:
    """A queued message; ``settle`` once it is answered or discarded."""

    message: Message
    entry: SessionEntry
    settled: bool = False

    def settle(self) -> None:
        if not self.settled:
            self.settled = True
            self.entry.active -= 1


class Sessions:
    """The sessions with open connections, so ``DELETE`` can stop their turns."""

    def __init__(self) -> None:
        self._entries: dict[str, SessionEntry] = {}

    def join(self, connection: Connection) -> SessionEntry:
        sid = connection.conv.session_id
        entry = self._entries.setdefault(sid, SessionEntry(sid))
        entry.connections.add(connection)
        return entry

    def leave(self, connection: Connection) -> None:
        sid = connection.conv.session_id
        entry = self._entries.get(sid)
        if entry is not None:
            entry.connections.discard(connection)
            if not entry.connections:
                del self._entries[sid]

    async def stop_turns(self, session_id: str) -> None:
        """Discard the session's queued messages and cancel its turns; return when they ended."""
        entry = self._entries.get(session_id)
        if entry is not None:
            await asyncio.gather(*(c.stop_turns() for c in list(entry.connections)))


class Connection:
    """Serves one accepted WebSocket until the client disconnects."""

    def __init__(self, websocket: WebSocket, conv: Conversation, state: EngineState) -> None:
        self.websocket = websocket
        self.conv = conv
        self.state = state
        self.entry: SessionEntry | None = None
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._current: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.websocket.send_json(message)

    async def serve(self) -> None:
        self.entry = self.state.sessions.join(self)
        worker = asyncio.create_task(self._work())
        try:
            while True:
                frame = await self.websocket.receive()
                if frame["type"] == "websocket.disconnect":
                    return
                try:
                    message = await self._parse(frame)
                except ProtocolError as exc:
                    await self._reject("protocol", str(exc))
                    continue
                if self.state.store.ended(self.conv.session_id):
                    await self._reject("ended", SESSION_ENDED)
                elif self.conv.stream:
                    await self._barge_in(message)
                else:
                    await self._enqueue(message)
        finally:
            await self.stop_turns()
            worker.cancel()
            await asyncio.wait([worker])
            self.state.sessions.leave(self)

    async def _parse(self, frame: dict[str, Any]) -> Message:
        if frame.get(INVALID_UTF8_EVENT):
            raise ProtocolError(INVALID_UTF8)
        raw = frame.get("text")
        if raw is None:
            raw = frame.get("bytes") or b""
        settings = self.state.settings
        parse = functools.partial(
            parse_client_frame,
            raw,
            max_bytes=settings.max_message_bytes,
            max_text_chars=settings.max_text_chars,
        )
        if isinstance(raw, str) and LARGE_FRAME_CHARS < len(raw) <= settings.max_message_bytes:
            # json.loads and base64 of megabytes: off the event loop, so /healthz, /readyz,
            # handshakes and other sessions keep being served meanwhile.
            return await asyncio.get_running_loop().run_in_executor(
                self.state.parse_executor, parse
            )
        return parse()

    async def _reject(self, reason: str, text: str) -> None:
        """One log line and one ``error`` for a frame that will not be answered."""
        log.info(
            "session %s: frame rejected (%s): %s", self.conv.session_id[:8], reason, one_line(text)
        )
        self.state.metrics.errors.labels(reason).inc()
        await self.send(error_message(text))

    def _accept(self, message: Message) -> None:
        assert self.entry is not None
        self.entry.active += 1
        self._queue.append(_Item(message, self.entry))
        self._wakeup.set()

    async def _enqueue(self, message: Message) -> None:
        """Plain connection: queue the message unless the session already has enough waiting."""
        assert self.entry is not None
        limit = self.state.settings.max_pending_turns
        if self.entry.active > limit:  # one being answered plus ``limit`` waiting
            await self._reject(
                "busy",
                f"Too many messages waiting: {limit} are already queued for this session; "
                "this one was dropped (wait for the replies before sending more)",
            )
            return
        self._accept(message)

    async def _barge_in(self, message: Message) -> None:
        """Streaming connection: options apply now; a new message replaces everything before."""
        if isinstance(message, OptionsIn):
            self.conv.stream = message.stream
            await self.send(options_message(self.conv.stream))
            return
        self._discard_queued()
        await self._interrupt()
        self._accept(message)

    def _discard_queued(self) -> None:
        while self._queue:
            self._queue.popleft().settle()

    async def _interrupt(self) -> None:
        """Cancel the turn in flight; if its reply had begun, say how far it got."""
        turn = self._current
        if turn is None or turn.done():
            return
        reply = self.conv.reply  # None while the turn still waits for its slot
        turn.cancel()
        await asyncio.wait([turn])
        if reply is not None:
            self.state.metrics.interruptions.inc()
            await self.send(interrupted_message(reply.id, reply.text.strip()))

    async def stop_turns(self) -> None:
        """Drop what is queued and cancel the turn in flight (the session ended or we closed)."""
        self._discard_queued()
        turn = self._current
        if turn is not None and not turn.done():
            turn.cancel()
            await asyncio.wait([turn])

    async def _work(self) -> None:
        """Answer queued messages one after another."""
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            item = self._queue.popleft()
            try:
                if isinstance(item.message, OptionsIn):
                    self.conv.stream = item.message.stream
                    await self.send(options_message(self.conv.stream))
                    continue
                self._current = turn = asyncio.create_task(self._turn(item.message))
                await asyncio.wait([turn])
                if not turn.cancelled() and turn.exception() is not None:
                    return  # the client is gone (see _turn); the reader ends too
            except WebSocketDisconnect:
                return
            finally:
                self._current = None
                item.settle()

    async def _turn(self, message: TextIn | AudioIn) -> None:
        """Run one turn in its scheduler slot, turning any failure into an ``error``."""
        state, conv = self.state, self.conv
        metrics = state.metrics
        kind = "audio" if isinstance(message, AudioIn) else "text"
        metrics.messages.labels(kind).inc()
        try:
            async with state.scheduler.turn(conv.session_id):
                with metrics.turn_seconds.labels(kind).time():
                    await state.pipeline.run_turn(conv, message, self.send)
        except AudioDecodeError as exc:
            await self._reject("audio", str(exc))
        except WebSocketDisconnect:
            raise
        except Exception:
            log.exception("turn failed in session %s", conv.session_id[:8])
            metrics.errors.labels("internal").inc()
            await self.send(error_message("The tutor could not answer; try again"))
        finally:
            conv.reply = None
