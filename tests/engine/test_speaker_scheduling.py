"""Concurrent speakers: slots granted by priority (FIFO among equals), and Piper syntheses of
several sessions at once, each a reply's first sentence going ahead of later ones."""

from __future__ import annotations

import asyncio

from tutor_engine.config import EngineSettings
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
