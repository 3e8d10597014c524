"""The history store: deployed by default (a Valkey StatefulSet with a claim, a generated
password, a NetworkPolicy), or an existing one; either way engines get it from the operator."""

from __future__ import annotations

import base64
import json
from typing import Any

import helm_python as helm
import pytest
from tutor_operator import names

from .conftest import NAMESPACE, Manifest, Render, all_on_values, find
from .test_chart import _engine_pod, _operator_settings

HISTORY = "-history"
EXTERNAL = {
    "enabled": False,
    "url": "rediss://valkey.data.svc:6380/2",
    "existingSecret": "valkey-auth",
    "passwordKey": "valkey-password",
}


def _history(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m["metadata"]["name"].endswith(HISTORY)]


def _store(manifests: list[Manifest]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The store's StatefulSet spec and its one container."""
    spec = find(manifests, "StatefulSet", HISTORY)["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    return spec, container


def _engine_env(manifests: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> dict[str, dict]:
    pod = _engine_pod(_operator_settings(manifests, monkeypatch))
    return {e["name"]: e for e in pod["containers"][0]["env"]}


def test_the_store_is_deployed_by_default(render: Render) -> None:
    manifests = render({})
    kinds = sorted(m["kind"] for m in _history(manifests))
    assert kinds == ["NetworkPolicy", "Secret", "Service", "StatefulSet"]
    spec, redis = _store(manifests)
    assert spec["replicas"] == 1
    assert spec["serviceName"] == find(manifests, "Service", HISTORY)["metadata"]["name"]
    repository, tag = redis["image"].rsplit(":", 1)
    assert repository == "valkey/valkey" and tag[0].isdigit()  # a pinned version
    flags = dict(zip(redis["args"][::2], redis["args"][1::2], strict=True))
    assert flags["--requirepass"] == "$(REDIS_PASSWORD)"  # expanded by the kubelet
    assert (flags["--appendonly"], flags["--dir"]) == ("yes", "/data")
    assert (flags["--maxmemory"], flags["--maxmemory-policy"]) == ("192mb", "noeviction")
    secret = find(manifests, "Secret", HISTORY)
    env = {e["name"]: e for e in redis["env"]}
    ref = {"name": secret["metadata"]["name"], "key": "password"}
    assert env["REDIS_PASSWORD"] == {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": ref}}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "ping | grep -q PONG" in redis[probe]["exec"]["command"][-1]
    assert redis["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "256Mi"},
    }
    assert spec["template"]["spec"]["automountServiceAccountToken"] is False
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster's default
    assert redis["volumeMounts"] == [{"name": claim["metadata"]["name"], "mountPath": "/data"}]
    service = find(manifests, "Service", HISTORY)["spec"]
    assert service["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert service["ports"] == [
        {"name": "redis", "port": 6379, "targetPort": "redis", "protocol": "TCP"}
    ]


def test_the_generated_password_appears_only_in_its_secret(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Generated once (``lookup`` keeps it on upgrades, as the engine key's): 40 random
    characters, referenced by the store and the engines, never written anywhere else."""
    manifests = render({})
    secret = find(manifests, "Secret", HISTORY)
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert len(password) == 40 and password.isalnum()
    again = find(render({}), "Secret", HISTORY)["data"]["password"]
    assert base64.b64decode(again).decode() != password  # random, not a constant
    others = [m for m in manifests if m is not secret]
    pod = _engine_pod(_operator_settings(manifests, monkeypatch))
    assert password not in json.dumps(others) and password not in json.dumps(pod)


def test_only_engine_pods_reach_the_store(render: Render) -> None:
    manifests = render({})
    policy = find(manifests, "NetworkPolicy", HISTORY)["spec"]
    spec, _ = _store(manifests)
    assert (
        policy["podSelector"]["matchLabels"].items()
        <= spec["template"]["metadata"]["labels"].items()
    )
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    engines = {names.LABEL_APP: names.ENGINE_APP}  # every engine pod the operator builds
    assert names.selector_labels("tutor-1").items() >= engines.items()
    assert rule == {
        "from": [{"podSelector": {"matchLabels": engines}}],
        "ports": [{"port": "redis", "protocol": "TCP"}],
    }
    # The engines' own policy restricts only what comes in: their way to the store is open.
    assert find(manifests, "NetworkPolicy", "-engine")["spec"]["policyTypes"] == ["Ingress"]
    closed = render({"networkPolicy": {"enabled": False}})
    assert [m["kind"] for m in _history(closed)].count("NetworkPolicy") == 0


def test_engines_get_the_deployed_store_ttl_and_drain_through_the_operator(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests = render({})
    settings = _operator_settings(manifests, monkeypatch)
    pod = _engine_pod(settings)
    engine = pod["containers"][0]
    env = {e["name"]: e for e in engine["env"]}
    service = find(manifests, "Service", HISTORY)
    port = service["spec"]["ports"][0]["port"]
    url = f"redis://{service['metadata']['name']}.{NAMESPACE}.svc:{port}/0"
    assert env["ENGINE_HISTORY_URL"]["value"] == url
    ref = {"name": find(manifests, "Secret", HISTORY)["metadata"]["name"], "key": "password"}
    assert env["ENGINE_HISTORY_PASSWORD"]["valueFrom"] == {"secretKeyRef": ref}
    assert env["ENGINE_SESSION_TTL_SECONDS"]["value"] == "3900"  # the 3600 s timeout + 300
    assert env["ENGINE_MAX_HISTORY_MESSAGES"]["value"] == "40"
    assert env["ENGINE_DRAIN_SECONDS"]["value"] == "20"
    assert engine["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "5"]}}}
    assert pod["terminationGracePeriodSeconds"] == 30  # 5 + 20 + 5
    assert pod["containers"][1]["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "25"]


def test_all_on_values_use_their_secret_storage_class_and_placement(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests = render(all_on_values())
    assert sorted(m["kind"] for m in _history(manifests)) == [
        "NetworkPolicy",
        "Service",
        "StatefulSet",
    ]  # history.redis.existingSecret: no generated Secret
    spec, redis = _store(manifests)
    ref = {"name": "history-auth", "key": "redis-password"}
    assert redis["env"][0]["valueFrom"] == {"secretKeyRef": ref}
    assert redis["image"] == "registry.example.com/valkey:8.1.10-alpine"
    assert spec["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast-ssd"
    assert spec["template"]["spec"]["nodeSelector"] == {"node-role": "data"}
    assert spec["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    env = _engine_env(manifests, monkeypatch)
    assert env["ENGINE_HISTORY_PASSWORD"]["valueFrom"] == {"secretKeyRef": ref}
    assert env["ENGINE_SESSION_TTL_SECONDS"]["value"] == "1920"  # 1800 + 120
    assert env["ENGINE_MAX_HISTORY_MESSAGES"]["value"] == "80"
    pod = _engine_pod(_operator_settings(manifests, monkeypatch))
    assert pod["terminationGracePeriodSeconds"] == 60  # 10 + 45 + 5


def test_an_existing_store_deploys_nothing_and_reaches_the_engines(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests = render({"history": {"redis": EXTERNAL}})
    assert _history(manifests) == []
    env = _engine_env(manifests, monkeypatch)
    assert env["ENGINE_HISTORY_URL"]["value"] == "rediss://valkey.data.svc:6380/2"
    ref = {"name": "valkey-auth", "key": "valkey-password"}
    assert env["ENGINE_HISTORY_PASSWORD"]["valueFrom"] == {"secretKeyRef": ref}
    # A store without a password: no Secret is referenced.
    open_store = render({"history": {"redis": {**EXTERNAL, "existingSecret": ""}}})
    config = find(open_store, "ConfigMap", "-operator")["data"]
    assert json.loads(config["TUTOR_OPERATOR_ENGINE_DEFAULTS"])["history"]["passwordSecret"] == ""
    assert "ENGINE_HISTORY_PASSWORD" not in _engine_env(open_store, monkeypatch)


@pytest.mark.parametrize(
    ("redis", "message"),
    [
        ({"enabled": False}, "history.redis.url is required when history.redis.enabled is false"),
        ({"url": "redis://redis:6379/0"}, "set it only with history.redis.enabled=false"),
    ],
)
def test_the_store_is_named_exactly_once(render: Render, redis: dict, message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render({"history": {"redis": redis}})


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"redis": {"url": "http://redis:6379"}}, "/history/redis/url"),
        ({"redis": {"url": "redis://:hunter2@redis:6379/0"}}, "/history/redis/url"),  # no secrets
        ({"redis": {"replicas": 3}}, "additional properties 'replicas' not allowed"),
        ({"redis": {"enabled": "yes"}}, "got string, want boolean"),
        ({"redis": {"maxMemory": "lots"}}, "/history/redis/maxMemory"),
        ({"redis": {"persistence": {"size": "big"}}}, "/history/redis/persistence/size"),
        ({"redis": {"image": {"tag": ""}}}, "/history/redis/image/tag"),
        ({"redis": {"passwordKey": ""}}, "/history/redis/passwordKey"),
        ({"maxMessages": -1}, "/history/maxMessages"),
        ({"ttlMarginSeconds": "5m"}, "got string, want integer"),
    ],
)
def test_schema_rejects_bad_history_values(chart: helm.Chart, bad: dict, message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=message):
        chart.validate_schema({"history": bad})


@pytest.mark.parametrize(
    ("bad", "message"),
    [({"drainSeconds": -5}, "/engine/drainSeconds"), ({"preStopSeconds": 1.5}, "want integer")],
)
def test_schema_rejects_bad_drain_values(chart: helm.Chart, bad: dict, message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=message):
        chart.validate_schema({"engine": bad})
