"""Right defaults per device: compute type and threads chosen from the device and the cores,
and an engine started with ``make run``'s defaults logs no warning."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tutor_contract.cores import threads_per_job
from tutor_engine.backends.faster_whisper_asr import choose_compute_type, choose_device

from tests.support.processes import engine_argv, free_port, launch_server, stop_server, wait_ready


def test_auto_device_is_cuda_only_when_one_is_seen() -> None:
    assert choose_device("auto", 0) == "cpu"
    assert choose_device("auto", 1) == "cuda"
    assert choose_device("cpu", 2) == "cpu"


def test_auto_compute_type_per_device() -> None:
    cpu = {"float32", "int8", "int8_float32"}
    cuda = {"float32", "float16", "int8_float16", "int8", "bfloat16"}
    assert choose_compute_type("auto", "cpu", cpu) == "int8"
    assert choose_compute_type("auto", "cuda", cuda) == "float16"
    assert choose_compute_type("auto", "cuda", {"float32", "int8_float16"}) == "int8_float16"
    assert choose_compute_type("auto", "cpu", {"float32"}) == "float32"
    assert choose_compute_type("auto", "cpu", set()) == "default"


def test_explicit_compute_type_is_kept() -> None:
    assert choose_compute_type("float32", "cpu", {"int8"}) == "float32"


def test_a_full_pool_of_jobs_shares_the_cores_out() -> None:
    assert threads_per_job(cores=2, jobs=2) == 1
    assert threads_per_job(cores=8, jobs=4) == 2  # a full pool: 8 threads on 8 cores
    assert threads_per_job(cores=8, jobs=3) == 3  # rounded up: 9 on 8
    assert threads_per_job(cores=4, jobs=4) == 1
    assert threads_per_job(cores=1, jobs=4) == 1
    assert threads_per_job(cores=16, jobs=1) == 16
    assert threads_per_job(cores=8, jobs=4, requested=3) == 3


def test_an_oversubscribed_pool_gives_a_lone_job_every_core() -> None:
    assert threads_per_job(cores=2, jobs=2, oversubscribe=2) == 2
    assert threads_per_job(cores=8, jobs=4, oversubscribe=2) == 4  # 16 threads on 8 cores
    assert threads_per_job(cores=4, jobs=1, oversubscribe=2) == 4  # never more than the cores


def test_engine_with_make_run_defaults_starts_without_warnings(tmp_path: Path) -> None:
    pytest.importorskip("faster_whisper")
    pytest.importorskip("piper")
    port = free_port()
    env = {
        "ENGINE_ASR_BACKEND": "auto",
        "ENGINE_TTS_BACKEND": "auto",
        "ENGINE_ASR_BEAM_SIZE": "1",
        "ENGINE_LLM_BACKEND": "mock",
        # As the local gateway gives its engines (memory:// warns, on purpose).
        "ENGINE_HISTORY_URL": f"sqlite:///{tmp_path / 'history.db'}",
    }
    engine = launch_server(engine_argv(port), env, port, tmp_path / "engine.log")
    try:
        wait_ready(engine, "/readyz")
    finally:
        stop_server(engine)
    log = engine.log()
    assert "compute type int8" in log or "on cuda" in log, log
    warnings = [line for line in log.splitlines() if re.search(r"warn", line, re.IGNORECASE)]
    assert warnings == []
