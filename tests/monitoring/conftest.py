"""The real-Prometheus tier: Debian's ``prometheus`` and ``promtool`` (``make test`` installs
them with scripts/prometheus-deps.sh). Without them these tests skip and say why; in CI (``$CI``
set) they fail instead. The cluster fixtures (API emulator, fake kubelet, operator) are the
ones tests/cluster uses (the ``tests.support.cluster`` plugin), under the chart's RBAC.
"""

from __future__ import annotations

import os

import pytest

from .promql import prometheus_binaries

DEPS_HINT = "run `make prometheus-deps` (apt-get install prometheus)"


def _missing(reason: str) -> None:
    """Skip, or fail in CI (``$CI`` set), where this tier must run."""
    message = f"{reason}: {DEPS_HINT}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    binary, _ = prometheus_binaries()
    if binary is None:
        _missing("no prometheus binary on PATH")
    return binary  # type: ignore[return-value]


@pytest.fixture(scope="session")
def promtool() -> str:
    _, binary = prometheus_binaries()
    if binary is None:
        _missing("no promtool binary on PATH")
    return binary  # type: ignore[return-value]
