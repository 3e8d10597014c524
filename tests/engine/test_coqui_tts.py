"""The Coqui backend on a tiny VITS model made here (random weights: the audio is noise).

The tests that need coqui-tts skip where it does not import (the main venv);
``scripts/test-coqui.sh`` runs them in ``.venv-coqui``. The model loads through the same path
as a real one on disk: ENGINE_TTS_BACKEND=coqui with ENGINE_TTS_MODEL and ENGINE_TTS_CONFIG.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from tutor_engine.audio import float_to_pcm16
from tutor_engine.backends import build_backends
from tutor_engine.backends.coqui_tts import CoquiTTS, model_files
from tutor_engine.config import EngineSettings

NO_COQUI = "coqui-tts is not installed here; scripts/test-coqui.sh runs this in .venv-coqui"
RATE = 16000
HOP = 256  # VitsConfig's default hop length: one output frame per HOP samples


def test_model_files_on_disk_and_by_name(tmp_path: Path) -> None:
    (tmp_path / "model.pth").write_bytes(b"")
    (tmp_path / "config.json").write_text("{}")
    assert model_files(str(tmp_path), "") == (
        str(tmp_path / "model.pth"),
        str(tmp_path / "config.json"),
    )
    other = tmp_path / "other.json"
    other.write_text("{}")
    assert model_files(str(tmp_path / "model.pth"), str(other))[1] == str(other)
    assert model_files("tts_models/multilingual/multi-dataset/xtts_v2", "") is None


def test_a_missing_model_on_disk_is_named_not_taken_for_a_coqui_name(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No \.pth checkpoint"):
        model_files(str(tmp_path / "empty"), "")
    for missing in (str(tmp_path / "gone"), "voices/model.pth", "./voice"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            model_files(missing, "")
    (tmp_path / "model.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="ENGINE_TTS_CONFIG"):
        model_files(str(tmp_path), "")


def test_float_samples_become_clipped_pcm16() -> None:
    pytest.importorskip("numpy")
    assert float_to_pcm16([0.0, 1.0, -2.0]) == b"\x00\x00\xff\x7f\x01\x80"


@pytest.fixture
def tiny_vits(tmp_path: Path) -> tuple[Path, Path]:
    """model.pth and config.json of a VITS model with random weights (a 6 MB checkpoint)."""
    pytest.importorskip("TTS", reason=NO_COQUI)
    import torch
    from TTS.tts.configs.vits_config import VitsArgs, VitsConfig
    from TTS.tts.models.vits import Vits

    torch.manual_seed(0)
    args = VitsArgs(
        hidden_channels=16,
        hidden_channels_ffn_text_encoder=32,
        num_layers_text_encoder=1,
        num_layers_posterior_encoder=1,
        num_layers_flow=1,
        upsample_initial_channel_decoder=32,
        init_discriminator=False,
    )
    config = VitsConfig(model_args=args)
    config.audio.sample_rate = RATE
    assert config.audio.hop_length == HOP
    model, conf = tmp_path / "model" / "model.pth", tmp_path / "model" / "config.json"
    model.parent.mkdir()
    torch.save({"model": Vits(config).state_dict()}, model)
    config.save_json(str(conf))
    return model, conf


def coqui_backend(monkeypatch: pytest.MonkeyPatch, model: str, config: str = "") -> CoquiTTS:
    """The TTS backend the engine builds from its environment, as in production."""
    monkeypatch.setenv("ENGINE_TTS_BACKEND", "coqui")
    monkeypatch.setenv("ENGINE_TTS_MODEL", model)
    monkeypatch.setenv("ENGINE_TTS_CONFIG", config)
    monkeypatch.setenv("ENGINE_TTS_DEVICE", "cpu")
    tts = build_backends(EngineSettings(_env_file=None)).tts  # type: ignore[call-arg]
    assert isinstance(tts, CoquiTTS)
    return tts


def load(tts: CoquiTTS, seconds: float = 60) -> None:
    asyncio.run(asyncio.wait_for(tts.load(), seconds))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_local_vits_model_loads_and_speaks(
    tiny_vits: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, config = tiny_vits
    tts = coqui_backend(monkeypatch, str(model), str(config))
    load(tts)
    text = "Hello there, **how** are you today?"
    wav = asyncio.run(tts.synthesize(text))
    with wave.open(io.BytesIO(wav)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        seconds = w.getnframes() / RATE
    # VITS gives each input token (a character, and a blank between characters) at least one
    # frame; random weights make the length otherwise arbitrary, but never minutes.
    tokens = 2 * len("Hello there, how are you today?")
    assert tokens * HOP / RATE * 0.9 <= seconds <= 30
    assert asyncio.run(tts.synthesize("**")) == asyncio.run(tts.synthesize(""))
    asyncio.run(tts.close())


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_model_folder_alone_finds_its_config(
    tiny_vits: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    tts = coqui_backend(monkeypatch, str(tiny_vits[0].parent))
    load(tts)
    with wave.open(io.BytesIO(asyncio.run(tts.synthesize("Hi.")))) as w:
        assert w.getnframes() > 0


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No network for Coqui's downloads, wherever this runs: every request goes to a proxy on
    a loopback port that refuses at once. The Coqui cache is empty (``TTS_HOME``)."""
    pytest.importorskip("TTS", reason=NO_COQUI)
    with socket.socket() as refusing:  # bound, never listening: connections are refused
        refusing.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{refusing.getsockname()[1]}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy)
            monkeypatch.setenv(name.lower(), proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("TTS_HOME", str(tmp_path / "coqui-cache"))
        monkeypatch.delenv("COQUI_TOS_AGREED", raising=False)
        yield


@pytest.mark.timeout(60)
def test_a_hub_model_name_fails_fast_and_clearly_offline(
    offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    tts = coqui_backend(monkeypatch, "tts_models/en/ljspeech/vits")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"could not be downloaded.*ENGINE_TTS_MODEL"):
        load(tts, seconds=30)
    assert time.monotonic() - started < 10


@pytest.mark.timeout(60)
def test_a_licensed_hub_model_fails_at_once_instead_of_prompting(
    offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    tts = coqui_backend(monkeypatch, "tts_models/multilingual/multi-dataset/xtts_v2")
    with pytest.raises(RuntimeError, match=r"COQUI_TOS_AGREED=1"):
        load(tts, seconds=30)


@pytest.mark.timeout(60)
def test_an_unknown_model_name_is_reported_as_such(
    offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    tts = coqui_backend(monkeypatch, "tts_models/xx/nobody/vits")
    with pytest.raises(ValueError, match="neither on disk nor a Coqui model name"):
        load(tts, seconds=30)
