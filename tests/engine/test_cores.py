"""available_cores(): cgroup v2 and v1 quotas, bounded by the scheduler's affinity."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tutor_contract import cores

from tests.support.processes import engine_argv, free_port

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def eight_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cores, "affinity_cores", lambda: 8)


def test_v2_quota_rounds_up(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cores.available_cores(tmp_path) == 2


def test_v2_unlimited_is_the_affinity(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cores.available_cores(tmp_path) == 8


def test_v1_quota(tmp_path: Path) -> None:
    folder = tmp_path / "cpu,cpuacct"
    folder.mkdir()
    (folder / "cpu.cfs_quota_us").write_text("300000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    assert cores.available_cores(tmp_path) == 3


def test_v1_unlimited(tmp_path: Path) -> None:
    (tmp_path / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    assert cores.available_cores(tmp_path) == 8


def test_never_more_than_affinity(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("1600000 100000\n")
    assert cores.available_cores(tmp_path) == 8


def test_tiny_quota_is_one_core(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("10000 100000\n")
    assert cores.available_cores(tmp_path) == 1


def test_no_cgroup_or_garbage(tmp_path: Path) -> None:
    assert cores.available_cores(tmp_path) == 8
    (tmp_path / "cpu.max").write_text("nonsense here\n")
    assert cores.available_cores(tmp_path) == 8


def _run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "OPENBLAS"))}
    return subprocess.run(command, env={**clean, **env}, capture_output=True, text=True, timeout=50)


def test_limit_blas_caps_numpys_openblas_pool() -> None:
    done = _run(
        [
            sys.executable,
            "-c",
            "import numpy; from threadpoolctl import threadpool_info; "
            "from tutor_contract.cores import limit_blas; "
            "print(limit_blas(1), [p['num_threads'] for p in threadpool_info()])",
        ]
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['openblas: 1'] [1]"


def test_limit_blas_without_a_blas_loaded_caps_nothing() -> None:
    done = _run(
        [sys.executable, "-c", "from tutor_contract.cores import limit_blas; print(limit_blas(1))"]
    )
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.timeout(60)
def test_the_engine_caps_the_blas_pool_at_one_thread_when_it_starts() -> None:
    # A model that cannot load makes the engine exit by itself once started.
    done = _run(
        engine_argv(free_port()),
        ENGINE_ASR_BACKEND="faster-whisper",
        ENGINE_ASR_MODEL="/nonexistent",
        ENGINE_EXIT_ON_LOAD_FAILURE="true",
    )  # ENGINE_BLAS_THREADS' default
    assert done.returncode == 3, done.stderr
    assert "BLAS threads: openblas: 1" in done.stderr
