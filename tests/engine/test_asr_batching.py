"""Whisper in a fitted window, and CUDA batching of concurrent sessions' clips: the window and
runaway rules, the collector's logic with a fake model (no GPU here), and the real windowed
decode run on CPU with tiny.en."""

from __future__ import annotations

import asyncio
import io
import shutil
import wave
from typing import Any

import pytest
from tutor_engine.backends.base import DecodedAudio
from tutor_engine.backends.faster_whisper_asr import (
    BatchCollector,
    runaway,
    token_budget,
    transcribe_window,
    window_frames,
)

from .speech import words

TIMESTAMP_BEGIN = 50363  # tiny.en's <|0.00|>


def test_the_window_fits_the_clip_between_the_minimum_and_whispers_30_s() -> None:
    assert window_frames(2.2, minimum_seconds=10) == 1000
    assert window_frames(12.5, minimum_seconds=10) == 1350  # the clip and 1 s
    assert window_frames(29.5, minimum_seconds=10) == 3000
    assert window_frames(0.5, minimum_seconds=30) == 3000


def test_a_decode_that_fills_its_budget_or_stamps_past_the_clip_is_a_runaway() -> None:
    words = [1000 + i for i in range(8)]  # eight text tokens
    stamp = lambda seconds: TIMESTAMP_BEGIN + int(seconds * 50)  # noqa: E731
    assert not runaway([stamp(0), *words, stamp(1.9)], 2.0, TIMESTAMP_BEGIN)
    assert runaway([stamp(0), *words, stamp(1.9), stamp(3.2)], 2.0, TIMESTAMP_BEGIN)
    assert runaway([stamp(0)] + words * 4, 2.0, TIMESTAMP_BEGIN)  # "what is 2 plus 2? what is"
    assert len([stamp(0)] + words * 4) >= token_budget(2.0) - 1


class FakeModel:
    """Records each batch; answers each clip with its own name."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail

    def run(self, clips: list[str]) -> list[str]:
        self.batches.append(clips)
        if self.fail:
            raise RuntimeError("CUDA out of memory")
        return [f"heard {clip}" for clip in clips]


async def test_clips_arriving_together_run_as_one_batch() -> None:
    model = FakeModel()
    collector = BatchCollector(model.run, size=8, window=0.01)
    heard = await asyncio.gather(*(collector.submit(c) for c in ("a", "b", "c")))
    assert heard == ["heard a", "heard b", "heard c"]
    assert model.batches == [["a", "b", "c"]]


async def test_a_full_batch_runs_at_once_and_the_rest_follows() -> None:
    model = FakeModel()
    collector = BatchCollector(model.run, size=2, window=60)
    first = asyncio.gather(collector.submit("a"), collector.submit("b"))
    assert await first == ["heard a", "heard b"]  # did not wait for the 60 s window
    collector.window = 0.01
    assert await collector.submit("c") == "heard c"
    assert model.batches == [["a", "b"], ["c"]]


async def test_an_error_reaches_every_caller_of_the_batch() -> None:
    collector = BatchCollector(FakeModel(fail=True).run, size=8, window=0.01)
    results = await asyncio.gather(
        collector.submit("a"), collector.submit("b"), return_exceptions=True
    )
    assert [str(r) for r in results] == ["CUDA out of memory"] * 2


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    model = FakeModel()
    collector = BatchCollector(model.run, size=8, window=0.01)
    gone = asyncio.create_task(collector.submit("a"))
    kept = asyncio.create_task(collector.submit("b"))
    await asyncio.sleep(0)
    gone.cancel()
    assert await kept == "heard b"
    assert model.batches == [["a", "b"]]


def spoken_samples(name: str) -> Any:
    """A bench question as 16 kHz float32 samples (espeak-ng, a voice unlike the tutor's)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("the spoken questions need espeak-ng (make browser-deps)")
    import numpy as np

    from bench.questions import spoken

    with wave.open(io.BytesIO(spoken(name))) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768


@pytest.fixture(scope="module")
def asr() -> Any:
    """The engine's faster-whisper backend with tiny.en on CPU, as ``make run`` has it."""
    from tutor_engine.backends.faster_whisper_asr import FasterWhisperASR
    from tutor_engine.config import EngineSettings

    from .speech import real_speech_settings

    backend = FasterWhisperASR(EngineSettings(**real_speech_settings(asr_beam_size=1)))
    asyncio.run(backend.load())  # the model is not bound to a loop
    return backend


def test_the_windowed_decode_hears_each_clip_alone_and_batched(asr: Any) -> None:
    short, long = spoken_samples("short"), spoken_samples("long")
    (alone,) = transcribe_window(asr._model, [short], "en", beam_size=1, minimum_seconds=10)
    assert {"prime", "number"} <= words(alone or "")
    batched = transcribe_window(asr._model, [short, long], "en", beam_size=1, minimum_seconds=10)
    assert batched[0] == alone  # padded into the longer clip's window, heard the same
    assert {"explain", "photosynthesis"} <= words(batched[1] or "")


async def test_the_engine_hears_speech_and_drops_silence(asr: Any) -> None:
    import numpy as np

    short = spoken_samples("short")
    assert {"prime", "number"} <= words(await asr.recognize(DecodedAudio(short, 2.2)))
    silence = np.zeros(32_000, dtype=np.float32)
    assert await asr.recognize(DecodedAudio(silence, 2.0)) == ""  # not whisper's "you"


async def test_a_runaway_decode_is_redone_in_whispers_full_window(
    asr: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tutor_engine.backends import faster_whisper_asr

    windows: list[int] = []
    monkeypatch.setattr(
        faster_whisper_asr, "transcribe_window", lambda *args: windows.append(1) or [None]
    )
    heard = await asr.recognize(DecodedAudio(spoken_samples("short"), 2.2))
    assert windows == [1]
    assert {"prime", "number"} <= words(heard)
