"""Cold start budgets line up in the chart: one value, engine.modelLoadTimeoutSeconds, gives
the vLLM sidecar's startup probe and the engine's LLM wait (through the operator), and the
gateway waits at least that long (README, "Cold start and its budgets")."""

from __future__ import annotations

import helm_python as helm
import pytest
from tutor_operator import objects
from tutor_operator.settings import OperatorSettings

from .conftest import NAMESPACE, Render, find


def _data(manifests: list[dict], suffix: str) -> dict[str, str]:
    return find(manifests, "ConfigMap", suffix)["data"]


def _engine_pod(operator_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict:
    for name, value in operator_env.items():
        monkeypatch.setenv(name, value)
    defaults = OperatorSettings(_env_file=None).engine_defaults
    engine = objects.build_default_engine(1, NAMESPACE, defaults)
    engine["metadata"]["uid"] = "u"
    deployment = objects.build_engine_deployment(objects.resolve(engine, defaults), 1)
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


@pytest.mark.parametrize("load", [1800, 600])
def test_one_value_sets_the_probe_the_engine_wait_and_the_gateway_wait(
    render: Render, load: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests = render({"engine": {"modelLoadTimeoutSeconds": load}})
    gateway_wait = int(_data(manifests, "-gateway")["ENGINE_START_TIMEOUT_SECONDS"])
    assert gateway_wait == load + 300
    containers = _engine_pod(_data(manifests, "-operator"), monkeypatch)
    env = {e["name"]: e.get("value") for e in containers["engine"]["env"]}
    assert float(env["ENGINE_LLM_WAIT_SECONDS"]) == load
    probe = containers["vllm"]["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] == load
    assert gateway_wait >= load


def test_a_gateway_wait_shorter_than_the_model_load_is_refused(render: Render) -> None:
    with pytest.raises(helm.HelmError, match=r"must be at least engine\.modelLoadTimeoutSeconds"):
        render({"gateway": {"engineStartTimeoutSeconds": 600}})
    manifests = render(
        {"gateway": {"engineStartTimeoutSeconds": 900}, "engine": {"modelLoadTimeoutSeconds": 900}}
    )
    assert _data(manifests, "-gateway")["ENGINE_START_TIMEOUT_SECONDS"] == "900"
