"""Concurrent speakers: slots granted by priority (FIFO among equals); the pipeline's hearing
and speaking share the slots when both models run on the CPU, a reply's first sentence ahead of
hearing, hearing ahead of later sentences; Piper syntheses of several sessions at once."""

from __future__ import annotations

import asyncio

from tutor_engine.audio import pcm16_to_wav
from tutor_engine.backends import Backends, DecodedAudio
from tutor_engine.backends.mock import MockLLM
from tutor_engine.config import EngineSettings
from tutor_engine.history import GuardedHistory, open_store
from tutor_engine.metrics import EngineMetrics
from tutor_engine.pipeline import TutorPipeline
from tutor_engine.protocol import AudioIn
from tutor_engine.scheduling import FairSlots

from .speech import real_speech_settings


async def test_waiters_are_served_by_priority_then_in_order() -> None:
    slots = FairSlots(1)
    await slots.acquire()
    served: list[str] = []

    async def wait(name: str, priority: int) -> None:
        await slots.acquire(priority)
        served.append(name)

    tasks = []
    for name, priority in (("late-2", 2), ("first-0", 0), ("mid-1", 1), ("second-0", 0)):
        tasks.append(asyncio.create_task(wait(name, priority)))
        await asyncio.sleep(0)
    cancelled = asyncio.create_task(wait("cancelled", 0))
    await asyncio.sleep(0)
    cancelled.cancel()
    for _ in tasks:
        slots.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert served == ["first-0", "second-0", "mid-1", "late-2"]


class Recording:
    """A model that notes what it ran, in order, into ``ran``."""

    def __init__(self, ran: list[str], on_cpu: bool) -> None:
        self.name, self.ran, self.on_cpu = type(self).__name__, ran, on_cpu

    async def load(self) -> None: ...

    async def close(self) -> None: ...


class RecordingASR(Recording):
    """Hears every clip as "question"."""

    async def decode(self, audio: bytes) -> DecodedAudio:
        return DecodedAudio(None, 1.0)

    async def recognize(self, audio: DecodedAudio) -> str:
        self.ran.append("hearing")
        return "question"

    async def transcribe(self, audio: bytes) -> str:
        return await self.recognize(await self.decode(audio))


class RecordingTTS(Recording):
    """Speaks a short silence."""

    async def synthesize(self, text: str) -> bytes:
        self.ran.append(text)
        return pcm16_to_wav(bytes(320), 16000)


def pipeline(ran: list[str], asr_on_cpu: bool, tts_on_cpu: bool) -> TutorPipeline:
    """A pipeline with one slot each for hearing and speaking."""
    settings = EngineSettings(_env_file=None, max_concurrent_decodes=1, tts_concurrency=1)
    metrics = EngineMetrics()
    store = open_store(settings)  # memory://
    history = GuardedHistory(store, 2.0, metrics.history_errors, metrics.history_seconds)
    backends = Backends(MockLLM(1), RecordingASR(ran, asr_on_cpu), RecordingTTS(ran, tts_on_cpu))
    return TutorPipeline(backends, history, settings, metrics)


async def test_on_cpu_a_first_sentence_goes_before_hearing_and_hearing_before_later_ones() -> None:
    ran: list[str] = []
    speech = pipeline(ran, asr_on_cpu=True, tts_on_cpu=True)
    await speech.hearing_slots.acquire()  # the cores are busy
    waiting = []
    for work in (
        speech._synthesize("a third sentence", None, sentence=2),
        speech._synthesize("a second sentence", None, sentence=1),
        speech.hear(AudioIn(b"clip")),
        speech._synthesize("a first sentence", None, sentence=0),
    ):
        waiting.append(asyncio.ensure_future(work))
        await asyncio.sleep(0)
    assert ran == []  # all wait for the one slot
    speech.hearing_slots.release()
    await asyncio.gather(*waiting)
    assert ran == ["a first sentence", "hearing", "a second sentence", "a third sentence"]


async def test_speech_on_a_gpu_does_not_wait_for_hearing_on_the_cpu() -> None:
    ran: list[str] = []
    speech = pipeline(ran, asr_on_cpu=True, tts_on_cpu=False)
    await speech.hearing_slots.acquire()
    async with asyncio.timeout(30):  # a bound, not a measurement: it would wait forever
        await speech._synthesize("first sentence", None, sentence=0)
    assert ran == ["first sentence"]
    speech.hearing_slots.release()


async def test_piper_speaks_several_sessions_at_once() -> None:
    from tutor_engine.audio import wav_duration
    from tutor_engine.backends.piper_tts import PiperTTS

    settings = EngineSettings(_env_file=None, **real_speech_settings(tts_concurrency=2))
    tts = PiperTTS(settings)
    await tts.load()
    alone = wav_duration(await tts.synthesize("What is a prime number?"))

    async def reply() -> list[float]:
        texts = ("What is a prime number?", "It has two divisors.")
        return [wav_duration(await tts.synthesize(text)) for text in texts]

    replies = await asyncio.gather(*(reply() for _ in range(4)))
    for first, second in replies:
        assert abs(first - alone) < 0.5 and second > 0.5  # whole speech, not garbled or empty
    await tts.close()


def test_piper_pool_threads_sleep_when_idle() -> None:
    """Spinning ONNX threads would take the cores from concurrent syntheses and whisper."""
    from tutor_engine.backends.piper_tts import bundled_voice, load_voice

    real_speech_settings()  # skips without the bundled voice
    voice = load_voice(*bundled_voice(), use_cuda=False, threads=2)
    options = voice.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2
