"""The chart keeps the gateway's /demo page off unless gateway.demo.enabled says otherwise."""

from __future__ import annotations

from tutor_gateway.config import GatewaySettings

from .conftest import Render, find


def _gateway_env(render: Render, values: dict) -> dict[str, str]:
    return find(render(values), "ConfigMap", "-gateway")["data"]


def test_demo_is_off_by_default_and_on_when_asked(render: Render) -> None:
    for values, expected in (({}, False), ({"gateway": {"demo": {"enabled": True}}}, True)):
        env = _gateway_env(render, values)
        assert env["DEMO_ENABLED"] == str(expected).lower()
        settings = GatewaySettings(_env_file=None, demo_enabled=env["DEMO_ENABLED"])  # type: ignore[call-arg]
        assert settings.demo_enabled is expected
    assert GatewaySettings(_env_file=None).demo_enabled is True  # type: ignore[call-arg]  # make run
