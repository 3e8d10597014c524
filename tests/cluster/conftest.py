"""Gateway cluster-mode tests reuse the cluster fixtures from ``tests.support.cluster``.

Gateways started here on the emulator authenticate as the chart's gateway ServiceAccount
(``KUBE_API_TOKEN``), so they run under the chart's RBAC like the operator does.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import GatewayFactory
from tests.servers import RunningServer
from tests.support.cluster import cluster, kube, kube_api, kubelet, operator_factory
from tests.support.kube_emulator import RunningEmulator

__all__ = ["cluster", "kube", "kube_api", "kubelet", "operator_factory"]


@pytest.fixture
def gateway_factory(gateway_factory: GatewayFactory, kube_api: RunningEmulator) -> GatewayFactory:
    """The shared factory, with the gateway's token for gateways on this emulator."""

    def start(**overrides: Any) -> RunningServer:
        if overrides.get("kube_api_url") == kube_api.url:
            overrides.setdefault("kube_api_token", kube_api.tokens["gateway"])
        return gateway_factory(**overrides)

    return start
