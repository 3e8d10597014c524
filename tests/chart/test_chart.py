"""The chart, rendered by the real Helm engine: valid manifests, safe pods, wiring to the code."""

from __future__ import annotations

import copy
import json
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from tutor_gateway.config import GatewaySettings
from tutor_operator import names, objects
from tutor_operator.settings import EngineDefaults, OperatorSettings

from .conftest import CHART, NAMESPACE, ROOT, Render, all_on_values, find, pod_specs

KUBE_VERSION = "1.32.0"  # the kind node image of scripts/e2e-kind.sh
VALUE_SETS = {
    "defaults": {},
    "all-on": all_on_values(),
    "external-history": {
        "history": {
            "redis": {
                "enabled": False,
                "url": "rediss://valkey.data.svc:6380/2",
                "existingSecret": "valkey-auth",
                "passwordKey": "valkey-password",
            }
        }
    },
}


@pytest.fixture(params=sorted(VALUE_SETS))
def values(request: pytest.FixtureRequest) -> dict[str, Any]:
    return copy.deepcopy(VALUE_SETS[request.param])


def test_manifests_validate_against_kubernetes_schemas(render: Render, values: dict) -> None:
    manifests = render(values)
    for manifest in manifests:
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # Prometheus Operator kinds: test_monitoring.py checks them with their CRDs
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "Service", "ConfigMap", "Role", "RoleBinding", "Job", "Pod"} <= kinds


def test_crds_validate_and_match_the_top_level_crds(chart: helm.Chart) -> None:
    shipped = {c["name"].removeprefix("crds/"): c["data"] for c in chart.crds}
    top = {p.name: p.read_text() for p in sorted((ROOT / "crds").glob("*.yaml"))}
    assert shipped == top, "charts/tutor-serving/crds/ drifted from crds/: run `make chart-crds`"
    for text in shipped.values():
        kubernetes_validate.validate(yaml.safe_load(text), KUBE_VERSION, strict=True)


def test_lint_strict_passes(values: dict) -> None:
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] > 1] == []  # beyond INFO


def test_every_pod_runs_non_root_read_only_without_capabilities(
    render: Render, values: dict
) -> None:
    specs = pod_specs(render(values))
    assert len(specs) >= 4  # gateway, operator, cleanup job, helm test (and the history store)
    for name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name


def _checksums(manifests: list[dict]) -> dict[str, str]:
    out = {}
    for suffix in ("-gateway", "-operator"):
        annotations = find(manifests, "Deployment", suffix)["spec"]["template"]["metadata"]
        out[suffix] = annotations["annotations"]["checksum/config"]
    return out


@pytest.mark.parametrize(
    ("change", "rolled"),
    [
        ({"gateway": {"maxSessions": 7}}, {"-gateway"}),
        ({"gateway": {"ingress": {"enabled": True}}}, {"-gateway"}),  # WEBSOCKET_URL
        ({"engine": {"idleTimeoutSeconds": 60}}, {"-operator"}),
        ({"engine": {"models": {"asr": {"model": "small"}}}}, {"-operator"}),
        ({"engine": {"drainSeconds": 40}}, {"-operator"}),
        ({"history": {"maxMessages": 10}}, {"-operator"}),
        ({"gateway": {"sessionTimeoutSeconds": 600}}, {"-gateway", "-operator"}),  # the TTL
        ({"gateway": {"replicas": 5}}, set()),
    ],
)
def test_config_changes_roll_the_right_pods(render: Render, change: dict, rolled: set) -> None:
    before, after = _checksums(render({})), _checksums(render(change))
    assert {k for k in before if before[k] != after[k]} == rolled


def test_engine_key_secret_is_kept_and_rolls_the_gateway(render: Render) -> None:
    def key_and_checksum(value: str) -> tuple[str, str]:
        manifests = render({"engineApiKey": {"value": value}})
        secret = find(manifests, "Secret", "-engine-key")
        template = find(manifests, "Deployment", "-gateway")["spec"]["template"]
        return secret["data"]["api-key"], template["metadata"]["annotations"]["checksum/secret"]

    assert key_and_checksum("one") == key_and_checksum("one")
    assert key_and_checksum("one")[1] != key_and_checksum("two")[1]
    generated = find(render({}), "Secret", "-engine-key")["data"]["api-key"]
    assert len(generated) >= 40  # base64 of 40 random characters (kept by lookup on upgrade)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        ({"gateway": {"replica": 2}}, "additional properties 'replica' not allowed"),
        ({"engine": {"models": {"llm": {"temperature": 1}}}}, "'temperature' not allowed"),
        ({"gateway": {"replicas": "two"}}, "got string, want integer"),
        ({"engine": {"gpu": {"count": 1.5}}}, "want integer"),
        ({"networkPolicy": {"enabled": "yes"}}, "got string, want boolean"),
        ({"engine": {"idlePolicy": "Sleep"}}, "/engine/idlePolicy"),
        ({"engine": {"models": {"asr": {"backend": "whisper.cpp"}}}}, "/engine/models/asr"),
        ({"engine": {"memory": "lots"}}, "/engine/memory"),
        ({"gateway": {"websocketUrl": "http://x/ws"}}, "/gateway/websocketUrl"),
        ({"vllm": {"replicas": 2}}, "additional properties 'replicas' not allowed"),
        ({"vllm": {"gpuMemoryUtilization": 1.5}}, "/vllm/gpuMemoryUtilization"),
    ],
)
def test_schema_rejects_bad_values(chart: helm.Chart, bad: dict, message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=message):
        chart.validate_schema(bad)


def test_values_file_documents_every_key() -> None:
    """Each leaf key has a comment line above it, or sits inside a commented block."""
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the open blocks
    previous = ""
    for number, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            previous = text or previous
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = previous.startswith("#") or any(doc for _, doc in stack)
        if text.endswith(":"):
            stack.append((indent, previous.startswith("#")))
        else:
            assert documented, f"values.yaml line {number} has no comment: {text}"
        previous = text


def _env(manifests: list[dict], suffix: str) -> dict[str, str]:
    return find(manifests, "ConfigMap", suffix)["data"]


def test_gateway_config_names_real_settings_and_parses(render: Render, values: dict) -> None:
    env = _env(render(values), "-gateway")
    fields = {name.upper() for name in GatewaySettings.model_fields}
    assert set(env) <= fields | {"ENGINE_API_KEY"}
    settings = GatewaySettings(_env_file=None, **{k.lower(): v for k, v in env.items()})
    assert settings.gateway_mode == "kubernetes"
    assert settings.kube_namespace == NAMESPACE


def test_operator_config_names_real_settings_and_parses(
    render: Render, values: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests = render(values)
    env = _env(manifests, "-operator")
    fields = {f"TUTOR_OPERATOR_{name.upper()}" for name in OperatorSettings.model_fields}
    assert set(env) <= fields
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings(_env_file=None)
    assert settings.namespace == NAMESPACE and settings.standalone
    assert settings.engine_defaults.tolerations == values.get("engine", {}).get(
        "tolerations", [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    # The engines' key Secret is the one the gateway reads.
    gateway = find(manifests, "Deployment", "-gateway")["spec"]["template"]["spec"]
    ref = gateway["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]
    defaults = settings.engine_defaults
    assert (ref["name"], ref["key"]) == (defaults.api_key_secret, defaults.api_key_secret_key)


def _operator_settings(manifests: list[dict], monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    for name, value in _env(manifests, "-operator").items():
        monkeypatch.setenv(name, value)
    return OperatorSettings(_env_file=None)


def _engine_pod(settings: OperatorSettings) -> dict:
    """The Deployment the operator builds from these settings for a tutor's first session."""
    defaults = settings.engine_defaults
    engine = objects.build_default_engine(1, NAMESPACE, defaults)
    engine["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    deployment = objects.build_engine_deployment(objects.resolve(engine, defaults), replicas=1)
    kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)
    return deployment["spec"]["template"]["spec"]


def test_default_engines_run_a_vllm_sidecar_that_holds_the_gpu(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = _engine_pod(_operator_settings(render({}), monkeypatch))
    engine, vllm = pod["containers"]
    assert vllm["image"] == "vllm/vllm-openai:v0.11.0"
    assert "--model=Qwen/Qwen2.5-7B-Instruct" in vllm["args"]
    assert "--gpu-memory-utilization=0.90" in vllm["args"]  # alone on its device-plugin GPU
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in engine["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in engine["env"]}
    assert env["ENGINE_LLM_BASE_URL"] == "http://127.0.0.1:8001/v1"
    assert env["ENGINE_EXIT_ON_LOAD_FAILURE"] == "true"
    with pytest.raises(helm.HelmError, match="baseUrl is required"):
        render({"vllm": {"enabled": False}})


def test_all_on_values_share_a_dra_gpu_and_an_external_llm_drops_the_sidecar(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = all_on_values()
    pod = _engine_pod(_operator_settings(render(values), monkeypatch))
    assert [c["name"] for c in pod["containers"]] == ["engine"]  # engine.models.llm.baseUrl
    assert pod["resourceClaims"] == [{"name": "gpu", "resourceClaimTemplateName": "two-gpus"}]
    values["engine"]["models"]["llm"]["baseUrl"] = ""
    pod = _engine_pod(_operator_settings(render(values), monkeypatch))
    engine, vllm = pod["containers"]
    assert engine["resources"]["claims"] == vllm["resources"]["claims"] == [{"name": "gpu"}]
    assert {"--port=8002", "--gpu-memory-utilization=0.75", "--max-model-len=8192"} <= set(
        vllm["args"]
    )
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "model-cache"}} in pod[
        "volumes"
    ]
    token = next(e for e in vllm["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "HF_TOKEN"}


def test_only_the_gateway_operator_and_prometheus_reach_engine_pods_on_their_port(
    render: Render, values: dict
) -> None:
    manifests = render(values)
    policy = find(manifests, "NetworkPolicy", "-engine")["spec"]
    assert policy["podSelector"] == {"matchLabels": {names.LABEL_APP: names.ENGINE_APP}}
    gateway = find(manifests, "Deployment", "-gateway")["spec"]["template"]["metadata"]["labels"]
    first, metrics = policy["ingress"][:2]
    selector = first["from"][0]["podSelector"]["matchLabels"]
    assert selector.items() <= gateway.items()
    # The engine container's named port: an engine with its own spec.port stays reachable.
    assert first["ports"] == metrics["ports"][:1] == [{"port": names.PORT_NAME, "protocol": "TCP"}]
    defaults = EngineDefaults()
    engine = objects.build_default_engine(1, NAMESPACE, defaults)
    engine["spec"]["port"] = 8123
    engine["metadata"]["uid"] = "u"
    pod = objects.build_engine_deployment(objects.resolve(engine, defaults), 1)["spec"]["template"]
    engine_c = pod["spec"]["containers"][0]
    assert engine_c["ports"] == [{"name": "http", "containerPort": 8123, "protocol": "TCP"}]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8123"
    source = metrics["from"][0]
    assert source["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    expected_ns = values.get("networkPolicy", {}).get("metrics", {}).get("namespaceSelector", {})
    assert source["namespaceSelector"] == expected_ns
    # The operator may read /readyz (a loading engine's reason goes into its conditions).
    operator = find(manifests, "Deployment", "-operator")["spec"]["template"]["metadata"]
    assert any(
        rule["from"][0]["podSelector"]["matchLabels"].items() <= operator["labels"].items()
        and rule["ports"] == first["ports"]
        for rule in policy["ingress"][1:]
        if "podSelector" in rule["from"][0] and "namespaceSelector" not in rule["from"][0]
    )
    # No rule opens the vLLM sidecar's port (it listens on the pod's loopback anyway).
    vllm_port = json.loads(_env(manifests, "-operator")["TUTOR_OPERATOR_ENGINE_DEFAULTS"])["vllm"][
        "port"
    ]
    assert all(p["port"] != vllm_port for rule in policy["ingress"] for p in rule["ports"])
    closed = render(
        {
            **values,
            "networkPolicy": {
                **values.get("networkPolicy", {}),
                "metrics": {"enabled": False, "namespaceSelector": {}, "podSelector": {}},
            },
        }
    )
    assert (
        len(find(closed, "NetworkPolicy", "-engine")["spec"]["ingress"])
        == len(policy["ingress"]) - 1
    )
    disabled = render({**values, "networkPolicy": {"enabled": False}})
    assert not [m for m in disabled if m["kind"] == "NetworkPolicy"]


def _rules(manifests: list[dict], suffix: str) -> dict[str, set[str]]:
    rules: dict[str, set[str]] = {}
    for rule in find(manifests, "Role", suffix)["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rules.setdefault(f"{group}/{resource}".lstrip("/"), set()).update(rule["verbs"])
    return rules


def test_gateway_rbac_is_exactly_what_it_calls(render: Render) -> None:
    assert _rules(render({}), "-gateway") == {
        "tutor.vts.dev/tutorsessions": {"get", "list", "watch", "create", "delete"},
        "tutor.vts.dev/tutorsessions/status": {"patch"},
        "tutor.vts.dev/tutorengines": {"get", "list", "watch"},  # where sessions can move
    }


def _kopf_needs(registry: Any) -> dict[str, set[str]]:
    """What kopf itself calls for the handlers registered in ``registry``."""
    needs: dict[str, set[str]] = {"events": {"create"}}  # its handler events
    for handlers, verbs in (
        (registry._indexing.get_all_handlers(), {"list", "watch"}),
        (registry._watching.get_all_handlers(), {"list", "watch"}),
        # Changing handlers: kopf patches its progress and diff-base annotations (and
        # finalizers, when a handler needs one).
        (registry._changing.get_all_handlers(), {"list", "watch", "patch"}),
        (registry._spawning.get_all_handlers(), {"list", "watch", "patch"}),
    ):
        for h in handlers:
            resource = f"{h.selector.group}/{h.selector.any_name}".lstrip("/")
            needs.setdefault(resource, set()).update(verbs)
    return needs


def test_operator_rbac_is_exactly_what_the_operator_and_kopf_call(render: Render) -> None:
    import kopf
    from tutor_operator import kube
    from tutor_operator.handlers import register
    from tutor_operator.reconcile import Context

    registry = kopf.OperatorRegistry()
    register(registry, Context(api=None, settings=OperatorSettings(_env_file=None)))  # type: ignore[arg-type]
    needed = _kopf_needs(registry)
    for (group, resource), verbs in kube.CALLS.items():
        needed.setdefault(f"{group}/{resource}".lstrip("/"), set()).update(verbs)
    # Children's ownerReferences with blockOwnerDeletion (OwnerReferencesPermissionEnforcement).
    needed["tutor.vts.dev/tutorengines/finalizers"] = {"update"}
    rules = _rules(render({}), "-operator")
    missing = {r: v - rules.get(r, set()) for r, v in needed.items() if v - rules.get(r, set())}
    extra = {r: v - needed.get(r, set()) for r, v in rules.items() if v - needed.get(r, set())}
    assert not missing, f"the operator's Role lacks {missing}"
    assert not extra, f"the operator's Role grants more than it calls: {extra}"
    assert "get" in rules["tutor.vts.dev/tutorsessions"]  # re-read after a conflict
    assert not any("secrets" in r or "kopfpeerings" in r for r in rules)  # standalone kopf


def test_the_operator_needs_no_finalizer_and_runs_no_per_object_timers() -> None:
    """Timers and daemons make kopf put a finalizer on every object (so deleting a namespace
    hangs once the operator is gone): the operator runs one loop of its own instead."""
    import kopf
    from tutor_operator.handlers import register
    from tutor_operator.reconcile import Context

    registry = kopf.OperatorRegistry()
    register(registry, Context(api=None, settings=OperatorSettings(_env_file=None)))  # type: ignore[arg-type]
    assert registry._spawning.get_all_handlers() == []
    assert not any(h.requires_finalizer for h in registry._changing.get_all_handlers())


def test_ingress_is_websocket_friendly_and_sets_the_public_url(render: Render) -> None:
    manifests = render(all_on_values())
    ingress = find(manifests, "Ingress", "-gateway")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "7200"
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert _env(manifests, "-gateway")["WEBSOCKET_URL"] == "wss://tutor.vts.example/ws"


def test_install_dry_run_prints_notes_with_next_steps() -> None:
    kubeconfig = json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": [], "users": []})
    with helm.Config(kubeconfig_content=kubeconfig, storage_driver="memory") as config:
        release = config.install(str(CHART), "tutor", {}, namespace=NAMESPACE, dry_run="client")
    notes = release["notes"]
    assert "kubectl -n tutor-system port-forward svc/tutor-tutor-serving-gateway 9000:9000" in notes
    assert "helm test tutor" in notes and "get tutorsessions,tutorengines" in notes
    assert "history lives in redis://tutor-tutor-serving-history.tutor-system.svc:6379/0" in notes
