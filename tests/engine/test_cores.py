"""available_cores(): cgroup v2 and v1 quotas, bounded by the scheduler's affinity."""

from __future__ import annotations

from pathlib import Path

import pytest
from tutor_contract import cores

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
