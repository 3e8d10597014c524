"""The chart's monitoring: monitors, scrape annotations, the scraper's NetworkPolicy rule, the
dashboards' ConfigMaps and the PrometheusRule, rendered by the real Helm engine.

The Prometheus Operator kinds are validated against that operator's own CRD schemas
(``prometheus-operator/*.json``: v0.93.0's, descriptions removed), strictly: a field the API
server would prune is an error here. tests/monitoring evaluates the rules and dashboards
against a real Prometheus.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml
from tutor_operator import names, objects
from tutor_operator.settings import OperatorSettings

from .conftest import CHART, NAMESPACE, Render, all_on_values, find

CRDS = Path(__file__).with_name("prometheus-operator")
RULES_FILE = CHART / "rules" / "tutor-serving.rules.yaml"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
ALL_MONITORING = {
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "podMonitor": {"enabled": True},
        "dashboards": {"enabled": True},
        "prometheusRule": {"enabled": True},
    }
}


def monitoring_values(**sections: dict[str, Any]) -> dict[str, Any]:
    return {"monitoring": sections}


def of_kind(manifests: list[dict], kind: str) -> list[dict]:
    return [m for m in manifests if m["kind"] == kind]


def dashboard_maps(manifests: list[dict]) -> list[dict]:
    return [m for m in of_kind(manifests, "ConfigMap") if "-dashboard-" in m["metadata"]["name"]]


def pod_template(manifests: list[dict], suffix: str) -> dict:
    return find(manifests, "Deployment", suffix)["spec"]["template"]


def operator_settings(manifests: list[dict], monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    for name, value in find(manifests, "ConfigMap", "-operator")["data"].items():
        monkeypatch.setenv(name, value)
    return OperatorSettings(_env_file=None)


def engine_pod(settings: OperatorSettings) -> dict:
    """The pod template the operator builds from these settings for a tutor's first session."""
    defaults = settings.engine_defaults
    engine = objects.build_default_engine(3, NAMESPACE, defaults)
    engine["metadata"]["uid"] = "00000000-0000-0000-0000-000000000003"
    return objects.build_engine_deployment(objects.resolve(engine, defaults), replicas=1)["spec"][
        "template"
    ]


def rules_file() -> dict:
    return yaml.safe_load(RULES_FILE.read_text())


def alerts(groups: list[dict]) -> dict[str, dict]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


# ---------------------------------------------------------------- what renders when


def test_nothing_of_the_prometheus_operator_renders_by_default(render: Render) -> None:
    manifests = render({})
    assert not [m for m in manifests if m["kind"] in MONITORING_KINDS]
    assert not dashboard_maps(manifests)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("serviceMonitor", {"ServiceMonitor": 2}),
        ("podMonitor", {"PodMonitor": 1}),
        ("prometheusRule", {"PrometheusRule": 1}),
        ("dashboards", {"dashboards": len(DASHBOARDS)}),
    ],
)
def test_each_part_renders_only_when_enabled(render: Render, section: str, expected: dict) -> None:
    manifests = render(monitoring_values(**{section: {"enabled": True}}))
    counts = {kind: len(of_kind(manifests, kind)) for kind in MONITORING_KINDS}
    counts["dashboards"] = len(dashboard_maps(manifests))
    assert {k: v for k, v in counts.items() if v} == expected


def _strict(schema: Any) -> Any:
    """A CRD schema as the API server's strict field validation applies it: an object with
    properties and no x-kubernetes-preserve-unknown-fields takes no other field."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if k != "x-kubernetes-validations"}
    if isinstance(out.get("pattern"), str) and out["pattern"].startswith("^(?i)"):
        out["pattern"] = "(?i)^" + out["pattern"][5:]  # Go takes flags anywhere, Python first
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _crd_schemas() -> dict[str, dict]:
    schemas = {}
    for path in CRDS.glob("*.json"):
        crd = json.loads(path.read_text())
        schemas[crd["kind"]] = _strict(crd["openAPIV3Schema"])
    return schemas


def test_monitors_and_rule_validate_against_the_prometheus_operator_crds(render: Render) -> None:
    schemas = _crd_schemas()
    assert set(schemas) == MONITORING_KINDS
    manifests = [m for m in render(all_on_values()) if m["kind"] in MONITORING_KINDS]
    assert {m["kind"] for m in manifests} == MONITORING_KINDS
    for manifest in manifests:
        assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
        body = {k: v for k, v in manifest.items() if k != "metadata"}
        jsonschema.validate(body, schemas[manifest["kind"]])
    # The check has teeth: a misspelt field is refused.
    monitor = copy.deepcopy(next(m for m in manifests if m["kind"] == "PodMonitor"))
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "5s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        jsonschema.validate({"spec": monitor["spec"]}, schemas["PodMonitor"])


# ---------------------------------------------------------------- monitors


def test_service_monitors_select_the_gateway_and_operator_services(render: Render) -> None:
    labels = {"release": "kube-prometheus-stack"}
    manifests = render(
        monitoring_values(serviceMonitor={"enabled": True, "labels": labels, "interval": "20s"})
    )
    for suffix, job, port in (
        ("-gateway", "tutor-gateway", "http"),
        ("-operator", "tutor-operator", "metrics"),
    ):
        monitor = find(manifests, "ServiceMonitor", suffix)
        assert labels.items() <= monitor["metadata"]["labels"].items()
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [
            s
            for s in of_kind(manifests, "Service")
            if selector.items() <= s["metadata"]["labels"].items()
        ]
        # Exactly one Service, with the monitored port, whose pods are the component's.
        assert len(services) == 1, [s["metadata"]["name"] for s in services]
        (service,) = services
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == port
        assert port in {p["name"] for p in service["spec"]["ports"]}
        assert (endpoint["path"], endpoint["interval"]) == ("/metrics", "20s")
        assert {"targetLabel": "job", "replacement": job} in endpoint["relabelings"]
        template = pod_template(manifests, suffix)
        assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        target = next(
            p["targetPort"] for p in service["spec"]["ports"] if p["name"] == endpoint["port"]
        )
        container_ports = {
            p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]
        }
        assert target in container_ports
    # The operator serves /metrics on the port its Service and container declare.
    config = find(manifests, "ConfigMap", "-operator")["data"]
    operator = pod_template(manifests, "-operator")["spec"]["containers"][0]
    metrics = next(p for p in operator["ports"] if p["name"] == "metrics")
    assert config["TUTOR_OPERATOR_METRICS_PORT"] == str(metrics["containerPort"]) == "8081"
    assert not any(
        p["name"] == "metrics" for p in find(manifests, "Service", "-gateway")["spec"]["ports"]
    )


def test_the_gateway_monitor_sends_a_key_when_metrics_need_one(render: Render) -> None:
    on = {"serviceMonitor": {"enabled": True}}
    plain = find(render(monitoring_values(**on)), "ServiceMonitor", "-gateway")
    assert "authorization" not in plain["spec"]["endpoints"][0]
    keyed = render(
        {**monitoring_values(**on), "gateway": {"managementApi": {"metricsRequireKey": True}}}
    )
    auth = find(keyed, "ServiceMonitor", "-gateway")["spec"]["endpoints"][0]["authorization"]
    secret = find(keyed, "Secret", "-management-api")
    assert auth == {
        "type": "Bearer",
        "credentials": {"name": secret["metadata"]["name"], "key": "api-keys"},
    }
    own = {"enabled": True, "bearerTokenSecret": {"name": "prom-key", "key": "token"}}
    keyed = render(
        {
            **monitoring_values(serviceMonitor=own),
            "gateway": {"managementApi": {"metricsRequireKey": True}},
        }
    )
    auth = find(keyed, "ServiceMonitor", "-gateway")["spec"]["endpoints"][0]["authorization"]
    assert auth["credentials"] == {"name": "prom-key", "key": "token"}


@pytest.mark.parametrize("vllm_metrics", [False, True])
def test_the_pod_monitor_scrapes_the_ports_engine_pods_have(
    render: Render, monkeypatch: pytest.MonkeyPatch, vllm_metrics: bool
) -> None:
    manifests = render(
        monitoring_values(
            podMonitor={"enabled": True, "labels": {"a": "b"}}, vllmMetrics=vllm_metrics
        )
    )
    monitor = find(manifests, "PodMonitor", "-engine")
    assert monitor["metadata"]["labels"]["a"] == "b"
    pod = engine_pod(operator_settings(manifests, monkeypatch))
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    ports = {p["name"]: c["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    endpoints = {e["port"]: e for e in monitor["spec"]["podMetricsEndpoints"]}
    assert set(endpoints) == ({"http", "vllm"} if vllm_metrics else {"http"})
    assert set(endpoints) <= set(ports)
    assert ports["http"] == "engine"
    if vllm_metrics:
        assert ports["vllm"] == "vllm"
        relabel = {r["targetLabel"]: r for r in endpoints["vllm"]["relabelings"]}
        # vLLM's series get the tutor from the pod label the operator sets.
        label = re.sub(r"[^a-zA-Z0-9_]", "_", names.LABEL_TUTOR_ID)
        assert relabel["tutor_id"]["sourceLabels"] == [f"__meta_kubernetes_pod_label_{label}"]
        assert names.LABEL_TUTOR_ID in pod["metadata"]["labels"]
        assert relabel["job"]["replacement"] == "tutor-vllm"
    assert {"targetLabel": "job", "replacement": "tutor-engine"} in endpoints["http"]["relabelings"]


# ---------------------------------------------------------------- annotations, network policy


def test_gateway_and_operator_pods_carry_scrape_annotations(render: Render) -> None:
    manifests = render({})
    for suffix, port in (("-gateway", "9000"), ("-operator", "8081")):
        annotations = pod_template(manifests, suffix)["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (
            port,
            "/metrics",
        )
    # Annotation scrapers send no key: none on the gateway while /metrics needs one.
    keyed = render({"gateway": {"managementApi": {"metricsRequireKey": True}}})
    assert "prometheus.io/scrape" not in pod_template(keyed, "-gateway")["metadata"]["annotations"]
    off = render(monitoring_values(podAnnotations=False))
    for suffix in ("-gateway", "-operator"):
        assert "prometheus.io/scrape" not in pod_template(off, suffix)["metadata"]["annotations"]
    # An administrator's own annotation wins over the chart's.
    own = render({"operator": {"podAnnotations": {"prometheus.io/scrape": "false"}}})
    assert (
        pod_template(own, "-operator")["metadata"]["annotations"]["prometheus.io/scrape"] == "false"
    )


def test_no_operator_metrics_port_means_no_metrics_service_or_monitor(render: Render) -> None:
    manifests = render(
        {"operator": {"metricsPort": 0}, **monitoring_values(serviceMonitor={"enabled": True})}
    )
    assert [m["metadata"]["name"] for m in of_kind(manifests, "ServiceMonitor")] == [
        "tutor-tutor-serving-gateway"
    ]
    assert not [
        s
        for s in of_kind(manifests, "Service")
        if s["metadata"]["name"].endswith("-operator-metrics")
    ]
    template = pod_template(manifests, "-operator")
    assert [p["name"] for p in template["spec"]["containers"][0]["ports"]] == ["health"]
    assert "prometheus.io/port" not in template["metadata"]["annotations"]
    assert find(manifests, "ConfigMap", "-operator")["data"]["TUTOR_OPERATOR_METRICS_PORT"] == "0"
    with pytest.raises(helm.HelmError, match="metricsPort must differ"):
        render({"operator": {"metricsPort": 8080}})


def _scraper_rule(manifests: list[dict], selector: dict) -> dict:
    policy = find(manifests, "NetworkPolicy", "-engine")["spec"]
    (rule,) = [r for r in policy["ingress"] if r["from"][0].get("podSelector") == selector]
    return rule


@pytest.mark.parametrize("vllm_metrics", [False, True])
def test_the_engine_network_policy_admits_the_scraper_on_metrics_ports_only(
    render: Render, monkeypatch: pytest.MonkeyPatch, vllm_metrics: bool
) -> None:
    scraper = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "vmagent"}},
    }
    manifests = render(
        {
            "networkPolicy": {"metrics": {"enabled": True, **scraper}},
            **monitoring_values(vllmMetrics=vllm_metrics),
        }
    )
    rule = _scraper_rule(manifests, scraper["podSelector"])
    assert rule["from"] == [scraper]
    expected = ["http", "vllm"] if vllm_metrics else ["http"]
    assert [p["port"] for p in rule["ports"]] == expected
    # Only the scraper's rule opens the vLLM port.
    policy = find(manifests, "NetworkPolicy", "-engine")["spec"]
    others = [r for r in policy["ingress"] if r is not rule]
    assert all(p["port"] == names.PORT_NAME for r in others for p in r["ports"])
    # The ports named there are the engine pod's, as the operator builds it from the chart.
    pod = engine_pod(operator_settings(manifests, monkeypatch))["spec"]
    engine, vllm = pod["containers"]
    declared = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
    assert set(expected) <= declared
    key_ref = {"name": "tutor-tutor-serving-engine-key", "key": "api-key"}
    vllm_env = {e["name"]: e for e in vllm["env"]}
    engine_env = {e["name"]: e for e in engine["env"]}
    if vllm_metrics:
        assert "--host=0.0.0.0" in vllm["args"]
        # Reachable beyond the pod, the OpenAI API needs the engine key; the engine sends it.
        assert vllm_env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == key_ref
        assert engine_env["ENGINE_LLM_API_KEY"]["valueFrom"]["secretKeyRef"] == key_ref
    else:
        assert "--host=127.0.0.1" in vllm["args"] and "ports" not in vllm
        assert "VLLM_API_KEY" not in vllm_env and "ENGINE_LLM_API_KEY" not in engine_env


def test_no_scraper_rule_when_metrics_ingress_is_off(render: Render) -> None:
    manifests = render(
        {
            "networkPolicy": {
                "metrics": {"enabled": False, "namespaceSelector": {}, "podSelector": {}}
            },
            **monitoring_values(vllmMetrics=True),
        }
    )
    policy = find(manifests, "NetworkPolicy", "-engine")["spec"]
    assert all(p["port"] == names.PORT_NAME for r in policy["ingress"] for p in r["ports"])


# ---------------------------------------------------------------- logs


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_log_format_reaches_every_component(
    render: Render, monkeypatch: pytest.MonkeyPatch, log_format: str
) -> None:
    values = {part: {"logFormat": log_format} for part in ("gateway", "operator", "engine")}
    manifests = render({} if log_format == "json" else values)  # json is the default
    assert find(manifests, "ConfigMap", "-gateway")["data"]["LOG_FORMAT"] == log_format
    settings = operator_settings(manifests, monkeypatch)
    assert settings.log_format == log_format
    engine = engine_pod(settings)["spec"]["containers"][0]
    assert {"name": "ENGINE_LOG_FORMAT", "value": log_format} in engine["env"]


# ---------------------------------------------------------------- dashboards


def test_dashboards_ship_as_labelled_configmaps(render: Render) -> None:
    manifests = render(monitoring_values(dashboards={"enabled": True}))
    maps = {m["metadata"]["name"]: m for m in dashboard_maps(manifests)}
    assert set(maps) == {f"tutor-tutor-serving-dashboard-{p.stem}" for p in DASHBOARDS}
    assert {p.stem for p in DASHBOARDS} >= {"fleet", "voice-latency", "errors"}
    for path in DASHBOARDS:
        config_map = maps[f"tutor-tutor-serving-dashboard-{path.stem}"]
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["namespace"] == NAMESPACE
        (name, text) = config_map["data"].popitem()
        assert name == f"tutor-serving-{path.stem}.json"
        assert json.loads(text) == json.loads(path.read_text())
    custom = render(
        monitoring_values(
            dashboards={
                "enabled": True,
                "label": "grafana.io/dashboard",
                "labelValue": "tutor",
                "namespace": "monitoring",
                "annotations": {"grafana_folder": "Tutors"},
            }
        )
    )
    for config_map in dashboard_maps(custom):
        assert config_map["metadata"]["labels"]["grafana.io/dashboard"] == "tutor"
        assert "grafana_dashboard" not in config_map["metadata"]["labels"]
        assert config_map["metadata"]["namespace"] == "monitoring"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "Tutors"}


# ---------------------------------------------------------------- the PrometheusRule


def _normal(groups: list[dict]) -> list[dict]:
    out = copy.deepcopy(groups)
    for group in out:
        for rule in group["rules"]:
            rule["expr"] = " ".join(rule["expr"].split())
    return out


def _rule(render: Render, **rule: Any) -> dict:
    manifests = render(monitoring_values(prometheusRule={"enabled": True, **rule}))
    return find(manifests, "PrometheusRule", "")


def test_the_prometheus_rule_is_the_rules_file(render: Render) -> None:
    rule = _rule(render, labels={"release": "kube-prometheus-stack"})
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert _normal(rule["spec"]["groups"]) == _normal(rules_file()["groups"])


def test_threshold_defaults_are_the_numbers_in_the_rules_file() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    thresholds = values["monitoring"]["prometheusRule"]["thresholds"]
    by_name = alerts(rules_file()["groups"])
    for name, value in thresholds.items():
        expr = " ".join(by_name[name]["expr"].split())
        number = re.search(r">\s*([0-9.]+)$", expr)
        assert number, f"{name} does not end with '> N': {expr}"
        assert float(number.group(1)) == value, name


def test_values_change_thresholds_disabled_alerts_and_labels_only(render: Render) -> None:
    rule = _rule(
        render,
        thresholds={"TutorVoiceSloSlow": 1.25, "TutorSessionsRejected": 5},
        disabled=["TutorEngineCrashLooping"],
        alertLabels={"team": "tutors", "severity": "page"},
    )
    rendered = alerts(rule["spec"]["groups"])
    original = alerts(rules_file()["groups"])
    assert set(original) - set(rendered) == {"TutorEngineCrashLooping"}
    assert rendered["TutorVoiceSloSlow"]["expr"].endswith("> 1.25")
    assert rendered["TutorSessionsRejected"]["expr"].endswith("> 5")
    for name, alert in rendered.items():
        # An alert's own labels win; the extra ones are added.
        assert alert["labels"] == {**original[name]["labels"], "team": "tutors"} | {
            "severity": original[name]["labels"]["severity"]
        }
        if name not in ("TutorVoiceSloSlow", "TutorSessionsRejected"):
            assert " ".join(alert["expr"].split()) == " ".join(original[name]["expr"].split())
    with pytest.raises(helm.HelmError, match="TutorNoSuchAlert"):
        _rule(render, thresholds={"TutorNoSuchAlert": 1})
    with pytest.raises(helm.HelmError, match="TutorNoSuchAlert"):
        _rule(render, disabled=["TutorNoSuchAlert"])


def test_the_otlp_endpoint_reaches_every_component(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    def endpoints(manifests: list[dict]) -> list[str | None]:
        found = []
        for suffix in ("-gateway", "-operator"):
            container = pod_template(manifests, suffix)["spec"]["containers"][0]
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            found.append(env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        engine = engine_pod(operator_settings(manifests, monkeypatch))["spec"]["containers"][0]
        found.append(
            {e["name"]: e.get("value") for e in engine["env"]}.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        )
        return found

    assert endpoints(render({})) == [None, None, None]  # traces are off by default
    url = "http://otel-collector.monitoring.svc:4318"
    assert endpoints(render({"tracing": {"otlpEndpoint": url}})) == [url, url, url]
