"""One client WebSocket: read every frame at once, answer turns in order, bound what waits.

The reader never stops reading while a turn runs: each frame is parsed (frames over
``LARGE_FRAME_CHARS`` in a small thread pool, off the event loop) and then

- rejected with an ``error`` (one log line, no traceback) if it is bad, or if
  ``max_pending_turns`` of the session's messages are already waiting;
- on a plain connection, queued: a worker answers queued messages one after another, so
  replies come in order with exactly the seed's messages;
- on a streaming connection, it replaces what is queued and interrupts the reply in flight
  (barge-in: ``interrupted``, then the new turn).

Every turn runs inside the engine's ``TurnScheduler``: one turn at a time per session, and
``max_concurrent_turns`` engine-wide, granted first come, first served. A turn of an ended
session (``DELETE`` on any engine) is answered with an ``error`` only.

Receipts: a connection opened with ``RELAY_HEADER: 1`` (the gateway) numbers the frames it
receives from 1 and sends ``receipt_frame(k, started=True)`` when frame k's turn begins and
``receipt_frame(k, started=False)`` once frame k is settled (answered, rejected, interrupted,
discarded, or its turn cancelled), after the last message of its reply. Options and rejected
frames get only the latter. With ``RELAY_HELLO_HEADER: 1`` as well, ``receipt_frame(0,
started=False)`` comes first, as soon as the connection is open.

Draining (SIGTERM): no queued message starts any more; ``restart`` lets the turn in flight
finish (until a deadline, then cancels it), and closes the socket with 1012. Frames that
never started get no receipt, nor does a turn cut at the deadline: the gateway sends the
former to the next engine and ends the latter's reply itself.

Traces: on a relay connection, a ``tutor_contract.relay`` trace frame (the gateway's span
context) is consumed, not numbered and not answered: the next client frame's turn, the span
``engine.turn``, becomes a child of that context. Each message's turn is timed from the moment
its frame was received.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import WebSocket, WebSocketDisconnect
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import StatusCode
from starlette.websockets import WebSocketDisconnected
from tutor_contract import tracing
from tutor_contract.relay import parse_trace_frame, receipt_frame
from tutor_contract.tasks import cancel_and_wait

from .audio_stream import AudioStream, SpeechEvent, TooLong, Utterance
from .backends import AudioDecodeError
from .backends.base import audio_too_long
from .pipeline import Conversation, SessionEnded, history_error_text
from .protocol import (
    INVALID_UTF8,
    LARGE_FRAME_CHARS,
    AudioCancelIn,
    AudioCommitIn,
    AudioIn,
    AudioStartIn,
    AudioStreamIn,
    ClientMessage,
    OptionsIn,
    ProtocolError,
    SpeechIn,
    TextIn,
    audio_start_message,
    error_message,
    interrupted_message,
    options_message,
    parse_client_frame,
    pcm16_chunk,
    speech_message,
)
from .transport import INVALID_UTF8 as INVALID_UTF8_EVENT
from .vad import SileroStream, VadConfig, shared_model

if TYPE_CHECKING:
    from .app import EngineState

log = logging.getLogger("tutor_engine")
tracer = tracing.tracer(__name__)

SESSION_ENDED = "This session has ended; the message was not answered"
CLOSE_RESTARTING = 1012  # the engine is draining: the gateway moves the session elsewhere
Message = TextIn | AudioIn | OptionsIn | SpeechIn
NO_AUDIO_STREAM = (
    "No audio stream is open: send audio_start before audio chunks, audio_commit or "
    "audio_cancel (after an engine restart, send audio_start again); this audio was not heard"
)
BINARY_HINT = " (to stream audio, send audio_start first, and again after an engine restart)"
NOTHING_TO_COMMIT = "Nothing to commit: no speech since the last turn"
# Streamed audio chunks longer than this (0.5 s of 16 kHz PCM16) go through the VAD in a thread.
LARGE_AUDIO_CHUNK_BYTES = 16_000


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
    """A queued message, frame ``seq`` of its connection; ``settle`` once answered or dropped.

    ``received``: ``time.perf_counter()`` when its frame had arrived; ``parent``: the trace
    context the gateway sent for it (if any).
    """

    message: Message
    entry: SessionEntry
    seq: int
    received: float = 0.0
    parent: Context | None = None
    settled: bool = False

    def settle(self) -> None:
        if not self.settled:
            self.settled = True
            self.entry.active -= 1


class Sessions:
    """The sessions with open connections, so ``DELETE`` can stop their turns."""

    def __init__(self) -> None:
        self._entries: dict[str, SessionEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

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

    def connections(self) -> list[Connection]:
        """Every open connection, of every session."""
        return [c for entry in self._entries.values() for c in entry.connections]

    async def stop_turns(self, session_id: str) -> None:
        """Discard the session's queued messages and cancel its turns; return when they ended."""
        entry = self._entries.get(session_id)
        if entry is not None:
            await asyncio.gather(*(c.stop_turns() for c in list(entry.connections)))


class Connection:
    """Serves one accepted WebSocket until the client disconnects (or the engine drains)."""

    def __init__(
        self,
        websocket: WebSocket,
        conv: Conversation,
        state: EngineState,
        relay: bool = False,
        hello: bool = False,
    ) -> None:
        self.websocket = websocket
        self.conv = conv
        self.state = state
        self.relay = relay  # send receipts (the gateway asked with RELAY_HEADER)
        self.hello = hello  # and receipt 0 at once (RELAY_HELLO_HEADER)
        self.entry: SessionEntry | None = None
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()  # set while the worker answers nothing
        self._idle.set()
        self._current: asyncio.Task[None] | None = None
        self._interrupting = False  # the turn in flight is being cancelled by a barge-in
        self._closed = False  # nothing more is sent: the client left, or we close for a restart
        self._send_lock = asyncio.Lock()
        self._trace: Context | None = None  # the gateway's context for the next client frame
        self._audio: AudioStream | None = None  # streamed audio input (audio_start)
        self._barge_in_voice = False  # audio_start's ``barge_in``, with VAD
        self._stray = False  # a run of audio frames with no stream open already got its error
        self._replying = False  # the turn in flight has sent its transcription

    async def send(self, message: dict[str, Any]) -> None:
        """Send a message to the client (dropped once the connection is closing)."""
        if message.get("type") == "transcription":
            self._replying = True  # a voice barge-in may cut this reply from now on
        async with self._send_lock:
            if not self._closed:
                await self.websocket.send_json(message)

    async def _receipt(self, seq: int, *, started: bool) -> None:
        if not self.relay:
            return
        conv = self.conv
        frame = receipt_frame(
            seq,
            started=started,
            stream=conv.stream,
            pcm16=conv.pcm16_rate,
            reply=conv.replies,
            held=self._audio is not None,
        )
        async with self._send_lock:
            if not self._closed:
                await self.websocket.send_text(frame)

    async def serve(self) -> None:
        self.entry = self.state.sessions.join(self)
        worker = asyncio.create_task(self._work())
        try:
            if self.hello:
                await self._receipt(0, started=False)
            if self.state.draining:  # accepted just as the drain began
                await self.restart(asyncio.get_running_loop().time())
            seq = 0
            while True:
                frame = await self.websocket.receive()
                received = time.perf_counter()
                if frame["type"] == "websocket.disconnect":
                    return
                carrier = parse_trace_frame(frame.get("text") or "") if self.relay else None
                if carrier is not None:
                    self._trace = tracing.extract(carrier)  # the gateway's, for the next frame
                    continue
                seq += 1
                parent, self._trace = self._trace, None
                await self._handle(seq, frame, received, parent)
        finally:
            self._closed = True
            await self.stop_turns()
            await cancel_and_wait([worker])
            self.state.sessions.leave(self)

    async def _handle(
        self, seq: int, frame: Mapping[str, Any], received: float, parent: Context | None = None
    ) -> None:
        """Reject, queue or (streaming) barge in with client frame number ``seq``."""
        try:
            message = await self._parse(frame)
        except ProtocolError as exc:
            binary = frame.get("text") is None and not frame.get(INVALID_UTF8_EVENT)
            if not (binary and self._stray):  # one error per run of binary frames
                hint = BINARY_HINT if binary else ""
                await self._reject("protocol", str(exc) + hint)
            self._stray = binary
            await self._receipt(seq, started=False)
            return
        if isinstance(message, AudioStreamIn):
            await self._audio_frame(seq, message, received, parent)
            return
        self._stray = False
        assert self.entry is not None
        await self._submit(_Item(message, self.entry, seq, received, parent))

    async def _parse(self, frame: Mapping[str, Any]) -> ClientMessage:
        if frame.get(INVALID_UTF8_EVENT):
            raise ProtocolError(INVALID_UTF8)
        raw = frame.get("text")
        if raw is None:
            raw = frame.get("bytes") or b""
            if self._audio is not None and len(raw) <= self.state.settings.max_message_bytes:
                return pcm16_chunk(raw)
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
        trace.get_current_span().set_attribute("error.reason", reason)  # the turn's, if any
        await self.send(error_message(text))

    def _accept(self, item: _Item) -> None:
        assert self.entry is not None
        self.entry.active += 1
        self._queue.append(item)
        self._wakeup.set()

    async def _submit(self, item: _Item) -> bool:
        """Queue the message, or (streaming) barge in with it; whether it was queued."""
        if self.conv.stream:
            return await self._barge_in(item)
        return await self._enqueue(item)

    async def _enqueue(self, item: _Item) -> bool:
        """Plain connection: queue the message unless the session already has enough waiting."""
        assert self.entry is not None
        limit = self.state.settings.max_pending_turns
        if self.entry.active > limit:  # one being answered plus ``limit`` waiting
            await self._reject(
                "busy",
                f"Too many messages waiting: {limit} are already queued for this session; "
                "this one was dropped (wait for the replies before sending more)",
            )
            await self._receipt(item.seq, started=False)
            return False
        self._accept(item)
        return True

    async def _barge_in(self, item: _Item) -> bool:
        """Streaming connection: options apply now; a new message replaces everything before."""
        message = item.message
        if isinstance(message, OptionsIn):
            await self._options(message)
            await self._receipt(item.seq, started=False)
            return False
        await self._interrupt()
        self._accept(item)
        return True

    async def _options(self, message: OptionsIn) -> None:
        """Apply a client's ``options`` and acknowledge them (the audio fields once named)."""
        conv = self.conv
        if message.stream is not None:
            conv.stream = message.stream
        conv.audio_format = message.audio_format or conv.audio_format
        conv.sample_rate = message.sample_rate or conv.sample_rate
        named = message.audio_format is not None or message.sample_rate is not None
        audio = (conv.audio_format, conv.sample_rate)
        await self.send(options_message(conv.stream, audio if named or conv.pcm16_rate else None))

    async def _discard_queued(self) -> None:
        dropped = list(self._queue)
        self._queue.clear()
        for item in dropped:
            item.settle()
        for item in dropped:
            await self._receipt(item.seq, started=False)

    async def _interrupt(self) -> None:
        """Drop what is queued and cancel the turn in flight; if its reply had begun, it says how
        far it got."""
        await self._discard_queued()
        turn = self._current
        if turn is None or turn.done():
            return
        self._interrupting = True
        try:
            await cancel_and_wait([turn])
        finally:
            self._interrupting = False

    async def stop_turns(self) -> None:
        """Drop what is queued and cancel the turn in flight (the session ended or we closed)."""
        await self._discard_queued()
        turn = self._current
        if turn is not None and not turn.done():
            await cancel_and_wait([turn])

    async def restart(self, deadline: float) -> None:
        """Drain: let the message being answered finish until ``deadline`` (event loop time),
        then cut it and close with 1012 (the gateway moves the session to another engine)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._idle.wait()
        async with self._send_lock:
            if self._closed:
                return
            self._closed = True
        turn = self._current
        if turn is not None and not turn.done():
            log.info("session %s: reply cut by the drain deadline", self.conv.session_id[:8])
            await cancel_and_wait([turn])
        with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected):
            await self.websocket.close(CLOSE_RESTARTING, "engine restarting")

    async def _work(self) -> None:
        """Answer queued messages one after another; none starts once the engine drains."""
        while True:
            while not self._queue or self.state.draining:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
            self._idle.clear()
            item = self._queue.popleft()
            try:
                answered = await self._answer(item)
            except WebSocketDisconnect:
                answered = False
            finally:
                self._current = None
                item.settle()
            if not answered:
                return  # the client is gone (see _turn); the reader ends too
            try:
                await self._receipt(item.seq, started=False)
            except WebSocketDisconnect:
                return

    async def _answer(self, item: _Item) -> bool:
        """Apply options or run the message's turn; False if the client turned out to be gone."""
        if isinstance(item.message, OptionsIn):
            await self._options(item.message)
            return True
        await self._receipt(item.seq, started=True)
        self._current = turn = asyncio.create_task(self._turn(item))
        await asyncio.wait([turn])
        return turn.cancelled() or turn.exception() is None

    async def _turn(self, item: _Item) -> None:
        """Run one turn (span ``engine.turn``) in its scheduler slot; any failure becomes an
        ``error``."""
        message = item.message
        assert isinstance(message, TextIn | AudioIn | SpeechIn)
        state, conv = self.state, self.conv
        metrics = state.metrics
        kind = "text" if isinstance(message, TextIn) else "audio"
        attributes = {
            "tutor.id": metrics.tutor_id,
            "session.id": conv.session_id[:8],
            "message.type": kind,
        }
        with tracer.start_as_current_span(
            "engine.turn", context=item.parent, attributes=attributes
        ) as span:
            metrics.messages.labels(kind).inc()
            metrics.turns.labels(kind).inc()
            try:
                async with state.scheduler.turn(conv.session_id):
                    with metrics.turn_seconds.labels(kind).time():
                        await state.pipeline.run_turn(conv, message, self.send, item.received)
            except SessionEnded:
                await self._reject("ended", SESSION_ENDED)
            except AudioDecodeError as exc:
                await self._reject("audio", str(exc))
            except WebSocketDisconnect:
                raise
            except asyncio.CancelledError:
                if self._interrupting:
                    await self._say_interrupted()
                span.set_attribute("turn.cancelled", True)
                raise
            except Exception:
                log.exception("turn failed in session %s", conv.session_id[:8])
                metrics.errors.labels("internal").inc()
                span.set_status(StatusCode.ERROR, "the turn failed")
                await self.send(error_message("The tutor could not answer; try again"))
            finally:
                conv.reply = None
                self._replying = False

    async def _say_interrupted(self) -> None:
        """After a barge-in: how far the reply got (nothing if it had not begun)."""
        reply = self.conv.reply
        if reply is None:  # the turn still waited for its slot
            return
        self.state.metrics.interruptions.inc()
        await self.send(interrupted_message(reply.id, reply.text.strip()))
        if reply.history_errors:
            await self.send(error_message(history_error_text(reply.history_errors)))

    # Streamed audio input (audio_start, chunks, audio_commit, audio_cancel).

    async def _audio_frame(
        self, seq: int, message: AudioStreamIn, received: float, parent: Context | None
    ) -> None:
        """Apply a frame of the audio stream; an utterance it ends becomes frame ``seq``'s turn
        (receipted like any message), every other frame is settled at once."""
        if isinstance(message, AudioStartIn):
            self._stray = False
            await self._open_audio(message)
            await self._receipt(seq, started=False)
            return
        stream = self._audio
        if stream is None:
            if not self._stray:
                await self._reject("protocol", NO_AUDIO_STREAM)
            self._stray = True
            await self._receipt(seq, started=False)
            return
        self._stray = False
        turn = False
        if isinstance(message, AudioCancelIn):
            stream.cancel()
        elif isinstance(message, AudioCommitIn):
            dropped = stream.overflowed  # its error was sent when it passed the limit
            utterance = stream.commit()
            if utterance is None and not dropped:
                await self._reject("audio", NOTHING_TO_COMMIT)
            elif utterance is not None:
                turn = await self._utterance(seq, utterance, received, parent)
        else:
            if len(message.pcm) <= LARGE_AUDIO_CHUNK_BYTES:
                events = stream.append(message.pcm)
            else:  # seconds of audio through the VAD: off the event loop
                events = await asyncio.get_running_loop().run_in_executor(
                    self.state.parse_executor, stream.append, message.pcm
                )
            for event in events:
                if isinstance(event, SpeechEvent):
                    await self.send(speech_message(event.kind, event.audio_ms))
                    if event.kind == "speech_started" and self._barge_in_voice:
                        await self._voice_barge_in()
                elif isinstance(event, TooLong):
                    await self._reject("audio", str(audio_too_long(event.limit_seconds)))
                elif isinstance(event, Utterance):
                    turn = await self._utterance(seq, event, received, parent) or turn
        if not turn:
            await self._receipt(seq, started=False)

    async def _open_audio(self, message: AudioStartIn) -> None:
        s = self.state.settings
        silence = message.silence_ms or s.vad_silence_ms
        vad = probability = None
        if message.vad:
            vad = VadConfig(s.vad_threshold, s.vad_min_speech_ms, silence)
            probability = SileroStream(await asyncio.to_thread(shared_model))
        self._audio = AudioStream(s.max_audio_seconds, vad, probability)
        self._barge_in_voice = message.vad and message.barge_in
        await self.send(audio_start_message(message.vad, silence, self._barge_in_voice))

    async def _utterance(
        self, seq: int, utterance: Utterance, received: float, parent: Context | None
    ) -> bool:
        """Queue an utterance's turn as frame ``seq``'s; whether it was accepted."""
        assert self.entry is not None
        speech = SpeechIn(utterance.samples, utterance.seconds)
        return await self._submit(_Item(speech, self.entry, seq, received, parent))

    async def _voice_barge_in(self) -> None:
        """The user started speaking: a reply under way (its transcription sent) is cut."""
        if self._replying:
            await self._interrupt()
