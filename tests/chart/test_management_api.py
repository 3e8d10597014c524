"""The chart's management API: a generated key in a Secret mounted as the gateway's key file,
a public Ingress with only the students' paths, and an opt-in Ingress for the management API."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
from tutor_gateway import auth
from tutor_gateway.config import GatewaySettings

from .conftest import CHART, NAMESPACE, Manifest, Render, all_on_values, find

KUBE_VERSION = "1.32.0"
GATEWAY = "tutor-tutor-serving-gateway"
SECRET = "tutor-tutor-serving-management-api"
PUBLIC = {"host": "tutor.example.edu"}


def ingress_paths(ingress: Manifest, gateway: str = GATEWAY) -> dict[str, str]:
    """Each path of an Ingress's one rule with its pathType; every backend is the gateway's."""
    [rule] = ingress["spec"]["rules"]
    paths = {}
    for path in rule["http"]["paths"]:
        assert path["backend"] == {"service": {"name": gateway, "port": {"name": "http"}}}
        paths[path["path"]] = path["pathType"]
    return paths


def ingresses(manifests: list[Manifest]) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Ingress"}


def gateway_pod(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = find(manifests, "Deployment", "-gateway")["spec"]["template"]["spec"]
    return spec


def gateway_settings(manifests: list[Manifest]) -> GatewaySettings:
    env = find(manifests, "ConfigMap", "-gateway")["data"]
    return GatewaySettings(_env_file=None, **{k.lower(): v for k, v in env.items()})  # type: ignore[call-arg]


def notes(values: dict[str, Any]) -> str:
    kubeconfig = json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": [], "users": []})
    with helm.Config(kubeconfig_content=kubeconfig, storage_driver="memory") as config:
        release = config.install(str(CHART), "tutor", values, namespace=NAMESPACE, dry_run="client")
    text: str = release["notes"]
    return text


# --- The key --------------------------------------------------------------------------------


def test_a_generated_key_is_mounted_as_the_gateways_key_file(
    render: Render, tmp_path: Path
) -> None:
    manifests = render({})
    secret = find(manifests, "Secret", "-management-api")
    assert secret["metadata"]["name"] == SECRET and secret["type"] == "Opaque"
    key = base64.b64decode(secret["data"]["api-keys"]).decode()
    assert len(key) == 40 and key.isalnum()

    pod = gateway_pod(manifests)
    [volume] = [v for v in pod["volumes"] if v["name"] == "management-api-keys"]
    assert volume["secret"] == {
        "secretName": SECRET,
        "defaultMode": 0o440,
        "items": [{"key": "api-keys", "path": "keys"}],
    }
    [container] = pod["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "management-api-keys"]
    assert "subPath" not in mount, "a subPath mount never sees the Secret change"
    assert mount["readOnly"] is True

    settings = gateway_settings(manifests)
    assert settings.management_api_keys_file == f"{mount['mountPath']}/keys"
    assert settings.management_api_keys.get_secret_value() == ""
    assert settings.metrics_require_key is False and settings.allowed_origins == ""
    # What the gateway reads from that file accepts exactly that key.
    keys_file = tmp_path / "keys"
    keys_file.write_bytes(base64.b64decode(secret["data"]["api-keys"]))
    keys = auth.ManagementKeys("", keys_file)
    assert keys.check(f"Bearer {key}").allowed
    assert not keys.check(f"Bearer {key[:-1]}").allowed
    # The management API's key is the engines' key nowhere.
    engine_key = find(manifests, "Secret", "-engine-key")["data"]["api-key"]
    assert engine_key != secret["data"]["api-keys"]


def test_a_new_key_does_not_roll_the_gateway(render: Render) -> None:
    """The file is re-read, so the Secret is in no checksum: rotation needs no restart."""
    values = {"engineApiKey": {"value": "fixed"}}
    first, second = render(values), render(values)
    keys = [find(m, "Secret", "-management-api")["data"]["api-keys"] for m in (first, second)]
    assert keys[0] != keys[1]  # lookup keeps it in a cluster; offline, each render generates
    annotations = [
        find(m, "Deployment", "-gateway")["spec"]["template"]["metadata"]["annotations"]
        for m in (first, second)
    ]
    assert annotations[0] == annotations[1]


def test_an_existing_secret_replaces_the_generated_one(render: Render) -> None:
    manifests = render(
        {"gateway": {"managementApi": {"existingSecret": "web-keys", "secretKey": "keys.txt"}}}
    )
    assert not [m for m in manifests if m["metadata"]["name"] == SECRET]
    [volume] = [v for v in gateway_pod(manifests)["volumes"] if v["name"] == "management-api-keys"]
    assert volume["secret"]["secretName"] == "web-keys"
    assert volume["secret"]["items"] == [{"key": "keys.txt", "path": "keys"}]


def test_metrics_and_origins_reach_the_gateways_settings(render: Render) -> None:
    values = {
        "gateway": {
            "managementApi": {"metricsRequireKey": True},
            "allowedOrigins": ["https://tutor.example.edu", "http://localhost:8080"],
        }
    }
    settings = gateway_settings(render(values))
    assert settings.metrics_require_key is True
    assert auth.parse_origins(settings.allowed_origins) == {
        "https://tutor.example.edu",
        "http://localhost:8080",
    }


def test_the_limits_reach_the_gateways_settings(render: Render) -> None:
    defaults = gateway_settings(render({}))
    assert (defaults.max_sessions_per_student, defaults.max_sessions_per_tutor) == (3, 100)
    limits = {
        "sessionsPerStudent": 5,
        "sessionsPerTutor": 40,
        "concurrentColdStarts": 4,
        "messagesPerSecond": 2.5,
        "messagesBurst": 7,
        "audioBytesPerSecond": 32000,
        "audioBurstBytes": 96000,
        "requestsPerMinute": 120,
        "retryAfterSeconds": 9,
    }
    settings = gateway_settings(render({"gateway": {"limits": limits}}))
    assert (
        settings.max_sessions_per_student,
        settings.max_sessions_per_tutor,
        settings.max_concurrent_cold_starts,
        settings.max_messages_per_second,
        settings.max_messages_burst,
        settings.max_audio_bytes_per_second,
        settings.max_audio_burst_bytes,
        settings.max_requests_per_minute,
        settings.admission_retry_after_seconds,
    ) == (5, 40, 4, 2.5, 7, 32000, 96000, 120, 9)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"gateway": {"managementApi": {"key": "x"}}}, "additional properties 'key' not allowed"),
        ({"gateway": {"managementApi": {"metricsRequireKey": "yes"}}}, "want boolean"),
        ({"gateway": {"managementApi": {"secretKey": "a/b"}}}, "/gateway/managementApi/secretKey"),
        ({"gateway": {"allowedOrigins": ["tutor.example.edu"]}}, "/gateway/allowedOrigins/0"),
        ({"gateway": {"allowedOrigins": ["https://a.example/path"]}}, "/gateway/allowedOrigins/0"),
        ({"gateway": {"allowedOrigins": "https://a.example"}}, "want array"),
        ({"gateway": {"ingress": {"managementApi": {"enabled": 1}}}}, "want boolean"),
        ({"gateway": {"ingress": {"managementApi": {"paths": []}}}}, "'paths' not allowed"),
        ({"gateway": {"limits": {"messagesPerSecond": 0}}}, "/gateway/limits/messagesPerSecond"),
        ({"gateway": {"limits": {"sessionsPerStudent": 0}}}, "/gateway/limits/sessionsPerStudent"),
        ({"gateway": {"limits": {"perStudent": 3}}}, "'perStudent' not allowed"),
    ],
)
def test_the_schema_rejects_bad_values(chart: helm.Chart, bad: dict, message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=message):
        chart.validate_schema(bad)


# --- The Ingresses -----------------------------------------------------------------------------


def test_no_ingress_by_default(render: Render) -> None:
    assert ingresses(render({})) == {}


def test_the_public_ingress_carries_only_the_students_paths(render: Render) -> None:
    manifests = render({"gateway": {"ingress": {"enabled": True, **PUBLIC}}})
    [ingress] = ingresses(manifests).values()
    assert ingress["metadata"]["name"] == GATEWAY
    assert ingress_paths(ingress) == {"/ws": "Prefix", "/static": "Prefix"}
    assert ingress["spec"]["rules"][0]["host"] == "tutor.example.edu"
    # The URLs sessions hand out are under it.
    assert gateway_settings(manifests).engine_url("x") == "ws://tutor.example.edu/ws/ws/x"
    kubernetes_validate.validate(ingress, KUBE_VERSION, strict=True)


def test_the_management_ingress_is_opt_in(render: Render) -> None:
    values = {
        "gateway": {"ingress": {"enabled": True, **PUBLIC, "managementApi": {"enabled": True}}}
    }
    found = ingresses(render(values))
    assert set(found) == {GATEWAY, f"{GATEWAY}-management"}
    management = found[f"{GATEWAY}-management"]
    assert ingress_paths(management) == {"/v1": "Prefix", "/mgmt/v1": "Prefix", "/health": "Exact"}
    assert management["spec"]["rules"][0]["host"] == "tutor.example.edu"  # the public host
    assert "annotations" not in management["metadata"]  # no WebSocket timeouts needed
    assert ingress_paths(found[GATEWAY]) == {"/ws": "Prefix", "/static": "Prefix"}
    for ingress in found.values():
        kubernetes_validate.validate(ingress, KUBE_VERSION, strict=True)


def test_the_management_ingress_on_its_own_host_class_and_certificate(render: Render) -> None:
    values = {
        "gateway": {
            "demo": {"enabled": True},
            "ingress": {
                "enabled": True,
                **PUBLIC,
                "className": "nginx",
                "tls": {"enabled": True, "secretName": "public-tls"},
                "managementApi": {
                    "enabled": True,
                    "host": "api.tutor.internal",
                    "className": "nginx-internal",
                    "annotations": {
                        "nginx.ingress.kubernetes.io/whitelist-source-range": "10.0.0.0/8"
                    },
                },
            },
        }
    }
    found = ingresses(render(values))
    management = found[f"{GATEWAY}-management"]
    spec = management["spec"]
    assert spec["ingressClassName"] == "nginx-internal"
    assert spec["tls"] == [
        {"hosts": ["api.tutor.internal"], "secretName": f"{GATEWAY}-management-tls"}
    ]
    assert spec["rules"][0]["host"] == "api.tutor.internal"
    assert management["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/whitelist-source-range": "10.0.0.0/8"
    }
    # The demo page is a management client: it comes with its files on that host.
    assert ingress_paths(management) == {
        "/v1": "Prefix",
        "/mgmt/v1": "Prefix",
        "/health": "Exact",
        "/demo": "Prefix",
        "/static": "Prefix",
    }
    assert found[GATEWAY]["spec"]["tls"] == [
        {"hosts": ["tutor.example.edu"], "secretName": "public-tls"}
    ]
    # On the public host it shares the public certificate and leaves /static to the public one.
    values["gateway"]["ingress"]["managementApi"]["host"] = ""
    management = ingresses(render(values))[f"{GATEWAY}-management"]
    assert management["spec"]["tls"] == [
        {"hosts": ["tutor.example.edu"], "secretName": "public-tls"}
    ]
    assert "/static" not in ingress_paths(management) and "/demo" in ingress_paths(management)


def test_all_on_values_render_both_ingresses(render: Render) -> None:
    found = ingresses(render(all_on_values()))
    gateway = "vts-tutor-gateway"
    management = found[f"{gateway}-management"]
    assert management["spec"]["tls"] == [
        {"hosts": ["api.tutor.internal"], "secretName": "api-tutor-tls"}
    ]
    assert set(ingress_paths(management, gateway)) == {
        "/v1",
        "/mgmt/v1",
        "/health",
        "/demo",
        "/static",
    }
    assert ingress_paths(found[gateway], gateway) == {"/ws": "Prefix", "/static": "Prefix"}


def test_lint_strict_passes_with_the_management_ingress() -> None:
    values = {"gateway": {"ingress": {"enabled": True, "managementApi": {"enabled": True}}}}
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] > 1] == []


# --- NOTES.txt ---------------------------------------------------------------------------------


def test_notes_tell_how_the_web_server_gets_the_key() -> None:
    text = notes({})
    assert f"One was generated into Secret {SECRET}" in text
    assert (
        f"kubectl -n {NAMESPACE} get secret {SECRET} -o jsonpath='{{.data.api-keys}}' | base64 -d"
        in text
    )
    assert '-H "Authorization: Bearer $KEY"' in text
    assert f"http://{GATEWAY}.{NAMESPACE}.svc:9000" in text  # the cluster Service
    assert f"port-forward svc/{GATEWAY} 9000:9000" in text
    assert "Rotate without downtime" in text


def test_notes_with_an_existing_secret_and_the_management_ingress() -> None:
    text = notes(
        {
            "gateway": {
                "managementApi": {"existingSecret": "web-keys", "secretKey": "keys.txt"},
                "ingress": {
                    "enabled": True,
                    **PUBLIC,
                    "tls": {"enabled": True, "secretName": ""},
                    "managementApi": {"enabled": True, "host": "api.tutor.internal"},
                },
            }
        }
    )
    assert "The keys are in your Secret web-keys (key keys.txt, one a line)" in text
    assert "get secret web-keys -o jsonpath='{.data.keys\\.txt}' | base64 -d" in text
    assert "https://api.tutor.internal/health" in text
    assert "carries only the students' paths (/ws/, /static/)" in text
    assert "port-forward" not in text
