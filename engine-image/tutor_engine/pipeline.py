"""One conversational turn: (speech →) text → LLM → text (→ speech), with history and retrieval.

A connection that has not opted in gets the seed's messages: ``text`` for a text message;
``transcription``, ``text`` and one whole-reply ``audio`` for an audio message. A streaming
connection gets ``text_delta`` events as tokens arrive, an ``audio_chunk`` per sentence
synthesised while the model is still generating, and a final ``text``.

History is loaded from the store when a turn begins and the exchange is written back when it
ends, also as far as it got when the turn is cancelled. If the store fails, the turn is still
answered, followed by one ``error`` saying the history could not be loaded or saved.

Each turn is measured (``metrics``): every stage once (decode, asr, retrieval,
llm_first_token, llm, tts_first_chunk, tts), the first reply text and audio from the moment
the user's message was received, audio seconds in and out, and the LLM's token usage. With
tracing on, each stage is a span (``engine.decode``, ``engine.asr``, ``engine.retrieval``,
``engine.llm``, ``engine.tts``) under the turn's ``engine.turn`` (started by the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from tutor_contract import tracing
from tutor_contract.tasks import cancel_and_wait

from .audio import PCM16_RATE, encode_speech, wav_duration
from .backends import AudioDecodeError, Backends, ChatMessage, DecodedAudio, Usage
from .config import EngineSettings
from .history import GuardedHistory, HistoryUnavailable
from .metrics import EngineMetrics
from .prompt import build_prompt
from .protocol import (
    AudioIn,
    SpeechIn,
    TextIn,
    audio_chunk_message,
    audio_message,
    error_message,
    final_message,
    text_delta_message,
    text_message,
    transcription_message,
)
from .scheduling import HEARING, FairSlots, run_holding, speech_priority
from .text import SentenceSplitter

log = logging.getLogger("tutor_engine.pipeline")
tracer = tracing.tracer(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


def wav_seconds(wav: bytes) -> float:
    """The duration of a synthesised WAV (0 if it cannot be read)."""
    try:
        return wav_duration(wav)
    except AudioDecodeError:
        return 0.0


@dataclass
class TurnClock:
    """When a turn's message was received, and which of its firsts have been measured."""

    received: float  # time.perf_counter() when the whole message had arrived
    mode: str  # "stream" or "whole": how the reply is sent
    input: str  # "audio" or "text"
    text_sent: bool = False
    audio_sent: bool = False

    def since(self) -> float:
        return time.perf_counter() - self.received


async def _to_the_end(work: Coroutine[Any, Any, None]) -> None:
    """Await ``work`` to its end even if cancelled meanwhile, then re-raise the cancel.

    For history writes (each bounded by the store timeout): a barge-in that cuts the turn
    while it saves must not lose the exchange, nor let the next turn load before it is saved.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


class SessionEnded(Exception):
    """The session was ended (``DELETE`` on any engine): its messages are not answered."""


@dataclass
class Reply:
    """The assistant reply being produced: its id on the connection and the text so far."""

    id: int
    text: str = ""
    history_errors: set[str] = field(default_factory=set)  # "load", "save": what failed


def history_error_text(ops: set[str]) -> str:
    """The ``error`` a client gets after a reply whose history could not be loaded or saved."""
    if ops >= {"load", "save"}:
        return (
            "The conversation history is unavailable: this reply did not see the earlier "
            "messages and this exchange could not be saved"
        )
    if "load" in ops:
        return "The conversation history could not be loaded: this reply did not see it"
    return "The conversation history could not be saved: the tutor may not remember this exchange"


@dataclass
class Conversation:
    """One connection's view of a session: its knowledge base and chosen protocol extensions."""

    session_id: str
    kb_id: str | None = None
    stream: bool = False
    audio_format: str = "wav"  # of reply audio: "wav" or "pcm16" (options)
    sample_rate: int = PCM16_RATE  # of pcm16 reply audio
    reply: Reply | None = None
    replies: int = 0  # reply ids given so far (the gateway may start a connection further on)

    @property
    def pcm16_rate(self) -> int | None:
        """The sample rate of raw PCM16 reply audio, or None for WAV files."""
        return self.sample_rate if self.audio_format == "pcm16" else None

    def next_reply(self) -> Reply:
        self.replies += 1
        self.reply = Reply(self.replies)
        return self.reply


class TutorPipeline:
    """Runs turns for every session of one tutor against that tutor's backends."""

    def __init__(
        self,
        backends: Backends,
        history: GuardedHistory,
        settings: EngineSettings,
        metrics: EngineMetrics,
    ) -> None:
        self.backends = backends
        self.history = history
        self.settings = settings
        self.metrics = metrics
        # Hearing (decode + ASR) and speaking, engine-wide: each holds a slot until its thread
        # is done, even if its turn was cancelled meanwhile. When both models run on the CPU
        # they share the hearing slots, so together they do not oversubscribe the cores, and
        # the speech that starts a reply goes first, then hearing, then the rest of replies.
        self.hearing_slots = FairSlots(settings.max_concurrent_decodes)
        self.speaking_slots = FairSlots(settings.tts_concurrency)

    @contextlib.contextmanager
    def stage(self, name: str, span: str | None = None) -> Iterator[None]:
        """Time a stage that completes (into ``stage_seconds``) inside span ``engine.<span>``."""
        started = time.perf_counter()
        with tracer.start_as_current_span(f"engine.{span or name}"):
            yield
        self.metrics.stage_seconds.labels(name).observe(time.perf_counter() - started)

    async def passages(self, conv: Conversation, query: str) -> list[str]:
        """Knowledge-base passages for the question (none without a kb_id or knowledge base)."""
        if not conv.kb_id or self.backends.knowledge is None:
            return []
        try:
            with self.stage("retrieval"):
                return await self.backends.knowledge.search(conv.kb_id, query)
        except Exception:
            log.exception("retrieval from knowledge base %s failed", conv.kb_id)
            return []

    async def load_history(self, conv: Conversation, reply: Reply) -> list[ChatMessage]:
        """The session's history (empty, noted on ``reply``, if the store fails).

        Raises ``SessionEnded`` if the session was ended.
        """
        try:
            messages = await self.history.load(conv.session_id)
        except HistoryUnavailable:
            reply.history_errors.add("load")
            return []
        if messages is None:
            raise SessionEnded
        return messages

    async def generate(
        self,
        conv: Conversation,
        user_text: str,
        reply: Reply,
        history: list[ChatMessage],
        on_delta: Callable[[str], Awaitable[None]] | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> str:
        """Stream the answer into ``reply.text`` and record the exchange in the history; the
        prompt is persona and passages, the history trimmed to fit, then the question.

        ``on_done`` runs once the answer is complete, before it is recorded. A cancelled reply
        is recorded as far as it got, so the next turn knows what was said.
        """
        s = self.settings
        try:
            prompt = build_prompt(
                s.system_prompt,
                history,
                user_text,
                passages=await self.passages(conv, user_text),
                context_tokens=s.llm_context_tokens,
                reply_tokens=s.llm_max_tokens,
            )
            with self.stage("llm"):
                await self._complete(prompt, reply, on_delta)
        except asyncio.CancelledError:
            await _to_the_end(self._record(conv, user_text, reply))
            raise
        if on_done is not None:
            on_done()
        await _to_the_end(self._record(conv, user_text, reply))
        return reply.text.strip()

    async def _complete(
        self,
        prompt: list[ChatMessage],
        reply: Reply,
        on_delta: Callable[[str], Awaitable[None]] | None,
    ) -> None:
        """The LLM's reply into ``reply.text``; its first token timed, its tokens counted."""
        usage = Usage()
        started = time.perf_counter()
        first = True
        try:
            async for piece in self.backends.llm.stream(prompt, usage=usage):
                if first:
                    first = False
                    took = time.perf_counter() - started
                    self.metrics.stage_seconds.labels("llm_first_token").observe(took)
                    trace.get_current_span().add_event("first token")
                reply.text += piece
                if on_delta is not None:
                    await on_delta(piece)
        finally:
            if usage.prompt_tokens:
                self.metrics.prompt_tokens.inc(usage.prompt_tokens)
            if usage.completion_tokens:
                self.metrics.completion_tokens.inc(usage.completion_tokens)
            span = trace.get_current_span()
            span.set_attribute("llm.prompt_tokens", usage.prompt_tokens)
            span.set_attribute("llm.completion_tokens", usage.completion_tokens)

    async def _record(self, conv: Conversation, user_text: str, reply: Reply) -> None:
        """Add the exchange to the history (the store refuses it if the session has ended)."""
        answer = reply.text.strip()
        said = [ChatMessage("assistant", answer)] if answer else []
        try:
            await self.history.save(conv.session_id, [ChatMessage("user", user_text), *said])
        except HistoryUnavailable:
            reply.history_errors.add("save")

    async def run_turn(
        self,
        conv: Conversation,
        message: TextIn | AudioIn | SpeechIn,
        send: Send,
        received: float | None = None,
    ) -> None:
        """Answer one user message with the seed's messages or, if opted in, a stream.

        ``received`` (``time.perf_counter()``) is when the message had fully arrived: the
        first reply text and audio are measured from there (default: now).
        Raises ``SessionEnded`` (before sending anything) if the session was ended. The
        history loads while the audio is decoded and recognised.
        """
        speak = isinstance(message, AudioIn | SpeechIn)
        clock = TurnClock(
            time.perf_counter() if received is None else received,
            "stream" if conv.stream else "whole",
            "audio" if speak else "text",
        )
        reply = conv.next_reply()
        if isinstance(message, TextIn):
            user_text = message.content
            history = await self.load_history(conv, reply)
        else:
            user_text, history = await self._hear_and_load(conv, message, reply)
        if speak:
            if not user_text:
                self.metrics.errors.labels("audio").inc()
                await send(error_message("No speech was recognised in the audio"))
                return
            if len(user_text) > self.settings.max_text_chars:  # as for typed text
                self.metrics.errors.labels("audio").inc()
                await send(
                    error_message(
                        f"Speech too long: {len(user_text)} characters recognised "
                        f"(limit {self.settings.max_text_chars})"
                    )
                )
                return
            transcript = transcription_message(user_text)
            await send({**transcript, "reply_id": reply.id} if conv.stream else transcript)
        clock.mode = "stream" if conv.stream else "whole"  # options may have come meanwhile
        if clock.mode == "stream":
            await self._stream_reply(conv, user_text, reply, history, send, speak, clock)
        else:
            answer = await self.generate(conv, user_text, reply, history)
            await send(text_message(answer))
            self._text_sent(clock)
            if speak:
                data, took = await self._synthesize(answer, conv.pcm16_rate, sentence=0)
                self.metrics.stage_seconds.labels("tts_first_chunk").observe(took)
                self.metrics.stage_seconds.labels("tts").observe(took)
                await send(audio_message(answer, data, conv.pcm16_rate))
                self._audio_sent(clock)
        if reply.history_errors:
            await send(error_message(history_error_text(reply.history_errors)))

    async def hear(self, message: AudioIn | SpeechIn) -> str:
        """What the user said, recognised in a hearing slot."""
        return (await run_holding(self.hearing_slots, self._hear(message), HEARING)).strip()

    async def _hear_and_load(
        self, conv: Conversation, message: AudioIn | SpeechIn, reply: Reply
    ) -> tuple[str, list[ChatMessage]]:
        """What the user said and the session's history, the history loading meanwhile."""
        loading = asyncio.ensure_future(self.load_history(conv, reply))
        loading.add_done_callback(lambda t: t.cancelled() or t.exception())  # never "unretrieved"
        try:
            user_text = await self.hear(message)
            return user_text, await loading  # long loaded, as a rule: ASR takes far longer
        finally:
            loading.cancel()  # ASR failed or the turn was cancelled; no-op once done

    async def _hear(self, message: AudioIn | SpeechIn) -> str:
        """Decode then recognise the user's audio (each step timed, and a span); a streamed
        utterance arrived decoded, so only ``asr`` runs."""
        asr = self.backends.asr
        if isinstance(message, SpeechIn):
            decoded = DecodedAudio(message.samples, message.seconds)
        else:
            with self.stage("decode"):
                decoded = await asr.decode(message.data)
        self.metrics.audio_input_seconds.inc(decoded.seconds)
        with self.stage("asr"):
            trace.get_current_span().set_attribute("audio.seconds", decoded.seconds)
            return await asr.recognize(decoded)

    def _text_sent(self, clock: TurnClock) -> None:
        if not clock.text_sent:
            clock.text_sent = True
            self.metrics.first_text_seconds.labels(clock.mode, clock.input).observe(clock.since())

    def _audio_sent(self, clock: TurnClock) -> None:
        if not clock.audio_sent:
            clock.audio_sent = True
            self.metrics.first_audio_seconds.labels(clock.mode).observe(clock.since())

    async def _synthesize(
        self, text: str, pcm16_rate: int | None, sentence: int
    ) -> tuple[str, float]:
        """The speech of ``text``, a reply's ``sentence``-th (0: first), as base64 (WAV, or
        PCM16 at ``pcm16_rate``) and how long it took, slot included (a span each). Encoding
        runs off the event loop."""
        started = time.perf_counter()
        asr, tts = self.backends.asr, self.backends.tts
        slots = self.hearing_slots if asr.on_cpu and tts.on_cpu else self.speaking_slots
        with tracer.start_as_current_span("engine.tts") as span:
            wav = await run_holding(slots, tts.synthesize(text), speech_priority(sentence))
            seconds = wav_seconds(wav)
            span.set_attribute("audio.seconds", seconds)
            data = await asyncio.to_thread(encode_speech, wav, pcm16_rate)
        self.metrics.audio_output_seconds.inc(seconds)
        return data, time.perf_counter() - started

    async def _stream_reply(
        self,
        conv: Conversation,
        user_text: str,
        reply: Reply,
        history: list[ChatMessage],
        send: Send,
        speak: bool,
        clock: TurnClock,
    ) -> None:
        """Deltas as tokens arrive; each finished sentence spoken while generation goes on."""
        splitter = SentenceSplitter(first_clause_chars=self.settings.tts_first_clause_chars)
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = (
            asyncio.create_task(self._speak(sentences, reply.id, send, clock, conv.pcm16_rate))
            if speak
            else None
        )

        async def on_delta(piece: str) -> None:
            for sentence in splitter.feed(piece):  # queued first: synthesis starts meanwhile
                sentences.put_nowait(sentence)
            await send(text_delta_message(reply.id, piece))
            self._text_sent(clock)

        def on_done() -> None:  # the last sentence is spoken while the exchange is saved
            if rest := splitter.flush():
                sentences.put_nowait(rest)
            sentences.put_nowait(None)

        try:
            answer = await self.generate(conv, user_text, reply, history, on_delta, on_done)
            chunks = await speaker if speaker else 0
        finally:
            if speaker and not speaker.done():
                await cancel_and_wait([speaker])
        await send(final_message(reply.id, answer, chunks))
        self._text_sent(clock)  # a reply with no delta (an empty answer) still sent its text

    async def _speak(
        self,
        sentences: asyncio.Queue[str | None],
        reply_id: int,
        send: Send,
        clock: TurnClock,
        pcm16_rate: int | None,
    ) -> int:
        """Synthesise queued sentences in order and send each as an ``audio_chunk``."""
        index = 0
        synthesis = 0.0
        while (sentence := await sentences.get()) is not None:
            data, took = await self._synthesize(sentence, pcm16_rate, sentence=index)
            synthesis += took
            if index == 0:
                self.metrics.stage_seconds.labels("tts_first_chunk").observe(took)
            await send(audio_chunk_message(reply_id, index, sentence, data, pcm16_rate))
            self._audio_sent(clock)
            index += 1
        if index:
            self.metrics.stage_seconds.labels("tts").observe(synthesis)
        return index
