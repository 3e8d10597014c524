"""The Coqui backend on a tiny VITS model made here (random weights: the audio is noise).

Skipped unless coqui-tts imports; it loads through the same path as a real model on disk.
"""

from __future__ import annotations

import asyncio
import io
import wave
from pathlib import Path

import pytest
from tutor_engine.backends.coqui_tts import CoquiTTS, float_to_pcm16, model_files
from tutor_engine.config import EngineSettings


def test_model_files_on_disk_and_by_name(tmp_path: Path) -> None:
    (tmp_path / "model.pth").write_bytes(b"")
    assert model_files(str(tmp_path), "") == (
        str(tmp_path / "model.pth"),
        str(tmp_path / "config.json"),
    )
    assert model_files(str(tmp_path / "model.pth"), "/etc/c.json")[1] == "/etc/c.json"
    assert model_files("tts_models/multilingual/multi-dataset/xtts_v2", "") is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No \.pth checkpoint"):
        model_files(str(tmp_path / "empty"), "")


def test_float_samples_become_clipped_pcm16() -> None:
    pytest.importorskip("numpy")
    assert float_to_pcm16([0.0, 1.0, -2.0]) == b"\x00\x00\xff\x7f\x01\x80"


@pytest.mark.slow
def test_a_local_vits_model_loads_and_speaks(tmp_path: Path) -> None:
    pytest.importorskip("TTS")
    import torch
    from TTS.tts.configs.vits_config import VitsConfig
    from TTS.tts.models.vits import Vits

    config = VitsConfig()
    config.model_args.hidden_channels = 16
    config.audio.sample_rate = 16000
    model = Vits.init_from_config(config)
    torch.save({"model": model.state_dict()}, tmp_path / "model.pth")
    config.save_json(str(tmp_path / "config.json"))

    tts = CoquiTTS(EngineSettings(_env_file=None, tts_model=str(tmp_path), tts_device="cpu"))
    asyncio.run(tts.load())
    wav = asyncio.run(tts.synthesize("Hello there."))
    with wave.open(io.BytesIO(wav)) as w:
        assert (w.getframerate(), w.getnchannels()) == (16000, 1)
        assert w.getnframes() > 0
