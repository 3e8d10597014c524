"""Pure manifest builders: a TutorEngine (and the operator's defaults) in, plain dicts out."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, cast

import kopf

from . import API_VERSION
from .decisions import Scaling
from .names import (
    CONTAINER,
    ENGINE_KIND,
    LABEL_BUSY,
    LABEL_ORIGIN,
    LABEL_TUTOR_ID,
    LLM_CONTAINER,
    ORIGIN_DEFAULTS,
    PORT_NAME,
    SPEC_HASH,
    TEMPLATE_HASH,
    engine_labels,
    engine_name,
    selector_labels,
)
from .settings import EngineDefaults

_MODEL_ENV = {  # (component, field) -> engine variable
    ("llm", "backend"): "ENGINE_LLM_BACKEND",
    ("llm", "model"): "ENGINE_LLM_MODEL",
    ("llm", "baseUrl"): "ENGINE_LLM_BASE_URL",
    ("asr", "backend"): "ENGINE_ASR_BACKEND",
    ("asr", "model"): "ENGINE_ASR_MODEL",
    ("asr", "language"): "ENGINE_ASR_LANGUAGE",
    ("tts", "backend"): "ENGINE_TTS_BACKEND",
    ("tts", "model"): "ENGINE_TTS_MODEL",
    ("tts", "config"): "ENGINE_TTS_CONFIG",
}
_RUN_AS = 10001
_GPU_CLAIM = "gpu"
TERMINATION_LOG = "/dev/termination-log"
# vLLM's share of GPU memory: alone on the GPU (its own default), beside the speech models,
# beside XTTS (coqui), which needs ~2 GB more than Piper (engine-image/README.md).
VLLM_GPU_ALONE, VLLM_GPU_SHARED, VLLM_GPU_SHARED_XTTS = 0.90, 0.80, 0.70
LLM_PORT_NAME = "vllm"  # the sidecar's container port, declared when its /metrics is exposed
GRACE_MARGIN_SECONDS = 5  # of an engine pod's grace period, after its drain: close and exit
DRAIN_ENV = "ENGINE_DRAIN_SECONDS"
STARTUP_PERIOD = 10  # seconds between two startup probes of the vLLM sidecar


def history_ttl_seconds(session_timeout: int, margin: int) -> int:
    """ENGINE_SESSION_TTL_SECONDS: a history outlives its session's idle timeout by ``margin``."""
    return session_timeout + margin


def termination_grace_seconds(prestop: int, drain: int) -> int:
    """An engine pod's ``terminationGracePeriodSeconds``: the preStop pause, the engine's
    drain (ENGINE_DRAIN_SECONDS), and a margin to close its sockets and exit."""
    return prestop + drain + GRACE_MARGIN_SECONDS


def default_engine_spec(tutor_id: int, defaults: EngineDefaults) -> dict[str, Any]:
    """The full TutorEngine spec the engine defaults give a tutor."""
    models = defaults.models.model_dump(by_alias=True)  # the spec's camelCase keys
    models["llm"]["server"] = _default_server(defaults)
    return {
        "tutorId": tutor_id,
        "image": defaults.image,
        "port": defaults.port,
        "minReplicas": defaults.min_replicas,
        "maxReplicas": defaults.max_replicas,
        "maxSessionsPerReplica": defaults.max_sessions_per_replica,
        "idleTimeoutSeconds": defaults.idle_timeout_seconds,
        "idlePolicy": defaults.idle_policy,
        "resources": {
            "gpuCount": defaults.gpu.count,
            "gpuResourceName": defaults.gpu.resource_name,
            "gpuClaimTemplate": defaults.gpu.claim_template,
            "cpu": defaults.cpu,
            "memory": defaults.memory,
        },
        "nodeSelector": dict(defaults.node_selector),
        "tolerations": copy.deepcopy(defaults.tolerations),
        "imagePullSecrets": copy.deepcopy(defaults.image_pull_secrets),
        "serviceAccountName": defaults.service_account_name,
        "priorityClassName": defaults.priority_class_name,
        "affinity": copy.deepcopy(defaults.affinity),
        "topologySpreadConstraints": copy.deepcopy(defaults.topology_spread_constraints),
        "models": models,
    }


def _default_server(defaults: EngineDefaults) -> dict[str, Any]:
    server: dict[str, Any] = {
        "image": defaults.vllm.image,
        "model": defaults.vllm.model,
        "port": defaults.vllm.port,
        "args": list(defaults.vllm.extra_args),
        "cpu": defaults.vllm.cpu,
        "memory": defaults.vllm.memory,
        "cacheClaim": defaults.vllm.cache.existing_claim,
    }
    if defaults.vllm.gpu_memory_utilization is not None:
        server["gpuMemoryUtilization"] = defaults.vllm.gpu_memory_utilization
    if defaults.vllm.max_model_len:
        server["maxModelLen"] = defaults.vllm.max_model_len
    return server


def _merge(default: Any, override: Any) -> Any:
    """``override`` over ``default``: objects merge key by key, anything else replaces."""
    if not isinstance(default, dict) or not isinstance(override, Mapping):
        return copy.deepcopy(override)
    merged = dict(default)
    for key, value in override.items():
        merged[key] = _merge(default.get(key), value)
    return merged


def effective_spec(spec: Mapping[str, Any], defaults: EngineDefaults) -> dict[str, Any]:
    """``spec`` with every omitted field (nested in resources and models) from the defaults."""
    merged = default_engine_spec(int(spec["tutorId"]), defaults)
    for key, value in spec.items():
        deep = key in ("models", "resources")
        merged[key] = _merge(merged[key], value) if deep else copy.deepcopy(value)
    return merged


class SpecError(ValueError):
    """A permanent problem with an engine's spec that the schema may not catch."""


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """A TutorEngine resolved against the defaults once, with the facts its builders share."""

    body: kopf.Body  # the TutorEngine: the owner of what is built from it
    name: str
    spec: dict[str, Any]  # the effective spec (``effective_spec``)
    defaults: EngineDefaults
    sidecar: bool  # the pod runs the vLLM sidecar
    claim: str  # the DRA ResourceClaimTemplate both containers share, or empty
    gpu_holder: str | None  # the container that requests device-plugin GPUs (``resolve``)

    @property
    def engine_gpu(self) -> bool:
        """Whether the engine container sees the pod's GPU."""
        return bool(self.claim) or self.gpu_holder == CONTAINER


def resolve(engine: Mapping[str, Any], defaults: EngineDefaults) -> EngineSpec:
    """Merge a TutorEngine body with the defaults and derive its GPU and sidecar facts.

    The device plugin gives each device to exactly one container, so with the sidecar the
    GPUs are vLLM's; a DRA claim (``gpuClaimTemplate``) is shared by both containers instead.
    Raises ``SpecError`` for a spec that cannot be built.
    """
    name = (engine.get("metadata") or {}).get("name")
    raw = engine.get("spec") or {}
    tutor_id = raw.get("tutorId")
    if not isinstance(tutor_id, int) or isinstance(tutor_id, bool) or tutor_id < 0:
        raise SpecError(f"spec.tutorId must be a non-negative integer, not {tutor_id!r}")
    if name != engine_name(tutor_id):
        raise SpecError(f"a TutorEngine for tutor {tutor_id} must be named {engine_name(tutor_id)}")
    if raw.get("minReplicas", 0) > raw.get("maxReplicas", raw.get("minReplicas", 0)):
        raise SpecError("spec.minReplicas must not exceed spec.maxReplicas")
    spec = effective_spec(raw, defaults)
    llm = spec["models"]["llm"]
    sidecar = llm["backend"] == "openai" and not llm["baseUrl"]  # else no vLLM sidecar
    if sidecar and not defaults.vllm.enabled:
        raise SpecError("spec.models.llm.baseUrl is required: the operator runs no vLLM sidecar")
    if sidecar and llm["server"]["port"] == spec["port"]:
        raise SpecError("spec.models.llm.server.port must differ from spec.port (one pod network)")
    claim = spec["resources"].get("gpuClaimTemplate") or ""
    holder = None
    if spec["resources"]["gpuCount"] and not claim:
        holder = LLM_CONTAINER if sidecar else CONTAINER
    body = kopf.Body(cast(kopf.RawBody, dict(engine)))
    return EngineSpec(body, name, spec, defaults, sidecar, claim, holder)


def checked(
    engine: Mapping[str, Any], defaults: EngineDefaults
) -> tuple[EngineSpec | None, str | None]:
    """``resolve``'s result, or ``None`` and what it finds wrong with the spec."""
    try:
        return resolve(engine, defaults), None
    except SpecError as exc:
        return None, str(exc)


def engine_scaling(engine: EngineSpec) -> Scaling:
    """The scaling parameters of a resolved TutorEngine."""
    spec = engine.spec
    labels = engine.body.metadata.labels
    return Scaling(
        min_replicas=spec["minReplicas"],
        max_replicas=spec["maxReplicas"],
        per_replica=spec["maxSessionsPerReplica"],
        idle_timeout=spec["idleTimeoutSeconds"],
        idle_policy=spec["idlePolicy"],
        deletable=labels.get(LABEL_ORIGIN) == ORIGIN_DEFAULTS,
    )


def build_default_engine(tutor_id: int, namespace: str, defaults: EngineDefaults) -> dict:
    """A TutorEngine from the operator's defaults, labelled so idling may delete it."""
    return {
        "apiVersion": API_VERSION,
        "kind": ENGINE_KIND,
        "metadata": {
            "name": engine_name(tutor_id),
            "namespace": namespace,
            "labels": {LABEL_TUTOR_ID: str(tutor_id), LABEL_ORIGIN: ORIGIN_DEFAULTS},
        },
        "spec": default_engine_spec(tutor_id, defaults),
    }


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    """A container variable from key ``key`` of Secret ``secret``."""
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def engine_env(engine: EngineSpec) -> list[dict[str, Any]]:
    """The engine container's environment: identity, models, API key, history store and
    drain, then ``spec.env``.

    With the vLLM sidecar the LLM is ``http://127.0.0.1:<server port>/v1``; an engine that
    cannot see the pod's GPU (the sidecar holds it) runs its speech models on the CPU.
    Secrets (the API key, the store's password) are references, never values.
    """
    spec, defaults = engine.spec, engine.defaults
    env: dict[str, dict[str, Any]] = {}

    def put(name: str, value: Any) -> None:
        env[name] = {"name": name, "value": str(value)}

    def put_secret(name: str, secret: str, key: str) -> None:
        env[name] = _secret_env(name, secret, key)

    put("ENGINE_TUTOR_ID", spec["tutorId"])
    put("ENGINE_HOST", "0.0.0.0")
    put("ENGINE_PORT", spec["port"])
    put("ENGINE_EXIT_ON_LOAD_FAILURE", "true")
    put("ENGINE_LLM_WAIT_SECONDS", defaults.model_load_timeout_seconds)  # as long as vLLM's startup
    for (part, field), name in _MODEL_ENV.items():
        value = spec["models"].get(part, {}).get(field)
        if value not in (None, ""):
            put(name, value)
    if engine.sidecar:
        server = spec["models"]["llm"]["server"]
        put("ENGINE_LLM_BASE_URL", f"http://127.0.0.1:{server['port']}/v1")
        put("ENGINE_LLM_MODEL", spec["models"]["llm"]["model"] or server["model"])
        if defaults.vllm.metrics and defaults.api_key_secret:
            # The exposed sidecar's /v1 API takes the engine key (VLLM_API_KEY).
            put_secret("ENGINE_LLM_API_KEY", defaults.api_key_secret, defaults.api_key_secret_key)
    if not engine.engine_gpu:
        put("ENGINE_ASR_DEVICE", "cpu")
        put("ENGINE_TTS_DEVICE", "cpu")
    if defaults.api_key_secret:
        put_secret("ENGINE_API_KEY", defaults.api_key_secret, defaults.api_key_secret_key)
    history = defaults.history
    if history.url:
        put("ENGINE_HISTORY_URL", history.url)
        if history.password_secret:
            put_secret("ENGINE_HISTORY_PASSWORD", history.password_secret, history.password_key)
    put("ENGINE_MAX_HISTORY_MESSAGES", history.max_messages)
    ttl = history_ttl_seconds(history.session_timeout_seconds, history.ttl_margin_seconds)
    put("ENGINE_SESSION_TTL_SECONDS", ttl)
    put(DRAIN_ENV, defaults.drain_seconds)
    if defaults.log_format:
        put("ENGINE_LOG_FORMAT", defaults.log_format)
    if defaults.otlp_endpoint:
        put("OTEL_EXPORTER_OTLP_ENDPOINT", defaults.otlp_endpoint)
    for extra in spec.get("env") or []:
        put(extra["name"], extra.get("value", ""))
    return list(env.values())


def drain_seconds(env: list[dict[str, Any]], default: int) -> int:
    """ENGINE_DRAIN_SECONDS as the engine container gets it (``spec.env`` may override it)."""
    for item in env:
        if item["name"] == DRAIN_ENV and "value" in item:
            try:
                return max(0, math.ceil(float(item["value"])))
            except ValueError:
                break
    return default


def _sleep(seconds: int) -> dict[str, Any]:
    """A container's ``lifecycle``: wait ``seconds`` before it gets SIGTERM (none for 0)."""
    if not seconds:
        return {}
    return {"lifecycle": {"preStop": {"exec": {"command": ["sleep", str(seconds)]}}}}


def _resources(cpu: str, memory: str, engine: EngineSpec, container: str) -> dict[str, Any]:
    res = engine.spec["resources"]
    requests = {"cpu": cpu, "memory": memory}
    limits = {"memory": memory}
    resources: dict[str, Any] = {"requests": requests, "limits": limits}
    if engine.claim:
        resources["claims"] = [{"name": _GPU_CLAIM}]
    elif engine.gpu_holder == container:
        requests[res["gpuResourceName"]] = limits[res["gpuResourceName"]] = str(res["gpuCount"])
    return resources


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _loopback_probe(port: int, period: int, failures: int) -> dict[str, Any]:
    """A probe of vLLM's ``/health`` from inside its container: it listens on loopback only."""
    url = f"http://127.0.0.1:{port}/health"
    check = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=4)"
    return {
        "exec": {"command": ["python3", "-c", check]},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def gpu_memory_utilization(engine: EngineSpec) -> float:
    """vLLM's ``--gpu-memory-utilization``: the spec's, else what the GPU's sharing leaves."""
    server = engine.spec["models"]["llm"]["server"]
    if server.get("gpuMemoryUtilization") is not None:
        return float(server["gpuMemoryUtilization"])
    if not engine.engine_gpu:
        return VLLM_GPU_ALONE
    xtts = engine.spec["models"]["tts"].get("backend") == "coqui"
    return VLLM_GPU_SHARED_XTTS if xtts else VLLM_GPU_SHARED


def vllm_args(engine: EngineSpec) -> list[str]:
    """The vLLM server's command line (the image's entry point is the OpenAI server)."""
    spec = engine.spec
    llm = spec["models"]["llm"]
    server = llm["server"]
    args = [
        f"--model={server['model']}",
        # Only the engine, over the pod's loopback (probes exec inside); all addresses when
        # Prometheus scrapes its /metrics (vllm_metrics: /v1 then needs the engine key).
        f"--host={'0.0.0.0' if engine.defaults.vllm.metrics else '127.0.0.1'}",
        f"--port={server['port']}",
        f"--gpu-memory-utilization={gpu_memory_utilization(engine):.2f}",
        f"--tensor-parallel-size={max(1, spec['resources']['gpuCount'])}",
    ]
    if llm.get("model") and llm["model"] != server["model"]:
        args.append(f"--served-model-name={llm['model']}")
    if server.get("maxModelLen"):
        args.append(f"--max-model-len={server['maxModelLen']}")
    return args + list(server.get("args") or [])


def build_llm_container(engine: EngineSpec, stop_after: int = 0) -> dict[str, Any]:
    """The vLLM sidecar: OpenAI API on the pod's loopback for the engine container.

    Every container of a stopping pod gets SIGTERM at once (after its own preStop hook), so
    the sidecar pauses ``stop_after`` seconds, the engine's preStop and drain: the turns the
    engine finishes meanwhile still have their LLM.
    """
    defaults = engine.defaults
    server = engine.spec["models"]["llm"]["server"]
    # Loading weights may take long: model_load_timeout_seconds to the first /health.
    startup_failures = max(1, math.ceil(defaults.model_load_timeout_seconds / STARTUP_PERIOD))
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/cache/huggingface"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
    ]
    if defaults.vllm.hf_token_secret:
        env.append(_secret_env("HF_TOKEN", defaults.vllm.hf_token_secret, "HF_TOKEN"))
    exposed: dict[str, Any] = {}
    if defaults.vllm.metrics:
        # /metrics for Prometheus on a named port; /v1 needs the engine key from then on.
        port = {"name": LLM_PORT_NAME, "containerPort": server["port"], "protocol": "TCP"}
        exposed["ports"] = [port]
        if defaults.api_key_secret:
            api_key = (defaults.api_key_secret, defaults.api_key_secret_key)
            env.append(_secret_env("VLLM_API_KEY", *api_key))
    return {
        "name": LLM_CONTAINER,
        "image": server["image"],
        "imagePullPolicy": "IfNotPresent",
        **exposed,
        "args": vllm_args(engine),
        "env": env,
        "resources": _resources(server["cpu"], server["memory"], engine, LLM_CONTAINER),
        "startupProbe": _loopback_probe(server["port"], STARTUP_PERIOD, startup_failures),
        "livenessProbe": _loopback_probe(server["port"], 15, 4),
        "readinessProbe": _loopback_probe(server["port"], 10, 3),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **_sleep(stop_after),
        "securityContext": copy.deepcopy(_SECURITY),
        "volumeMounts": [
            {"name": "model-cache", "mountPath": "/cache"},
            {"name": "vllm-tmp", "mountPath": "/tmp"},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }


def _llm_volumes(engine: EngineSpec) -> list[dict[str, Any]]:
    defaults = engine.defaults
    claim = engine.spec["models"]["llm"]["server"].get("cacheClaim")
    cache = (
        {"persistentVolumeClaim": {"claimName": claim}}
        if claim
        else {"emptyDir": {"sizeLimit": defaults.vllm.cache.size_limit}}
    )
    return [
        {"name": "model-cache", **cache},
        {"name": "vllm-tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": defaults.vllm.shm_size}},
    ]


def build_engine_deployment(engine: EngineSpec, replicas: int) -> dict[str, Any]:
    """The Deployment of an engine's pods, owned by the TutorEngine.

    A stopping pod pauses (preStop) so routing to it stops, then the engine drains; its grace
    period covers both (``termination_grace_seconds``).
    """
    name, spec, defaults = engine.name, engine.spec, engine.defaults
    res = spec["resources"]
    env = engine_env(engine)
    prestop, drain = defaults.pre_stop_seconds, drain_seconds(env, defaults.drain_seconds)
    containers = [
        {
            "name": CONTAINER,
            "image": spec["image"],
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": PORT_NAME, "containerPort": spec["port"], "protocol": "TCP"}],
            "env": env,
            "resources": _resources(res["cpu"], res["memory"], engine, CONTAINER),
            "startupProbe": _probe("/healthz", 5, 60),
            "livenessProbe": _probe("/healthz", 10, 6),
            "readinessProbe": _probe("/readyz", 5, 3),
            # A model that fails to load ends the process with its error here (the status).
            "terminationMessagePath": TERMINATION_LOG,
            "terminationMessagePolicy": "FallbackToLogsOnError",
            **_sleep(prestop),
            "securityContext": copy.deepcopy(_SECURITY),
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }
    ]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if engine.sidecar:
        containers.append(build_llm_container(engine, stop_after=prestop + drain))
        volumes += _llm_volumes(engine)
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace_seconds(prestop, drain),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": _RUN_AS,
            "runAsGroup": _RUN_AS,
            "fsGroup": _RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "nodeSelector": spec["nodeSelector"],
        "tolerations": spec["tolerations"],
        "containers": containers,
        "volumes": volumes,
    }
    pod_spec.update(_placement(spec, name))
    if engine.claim:
        pod_spec["resourceClaims"] = [
            {"name": _GPU_CLAIM, "resourceClaimTemplateName": engine.claim}
        ]
    deployment_spec: dict[str, Any] = {
        "replicas": replicas,
        "revisionHistoryLimit": 3,
        "selector": {"matchLabels": selector_labels(name)},
        # A GPU is rarely spare: replace pods one at a time instead of surging.
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
        },
        "template": {
            "metadata": {
                "labels": engine_labels(name, spec["tutorId"]),
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(spec["port"]),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": pod_spec,
        },
    }
    template = template_hash(deployment_spec["template"])
    annotations = {SPEC_HASH: spec_hash(spec), TEMPLATE_HASH: template}
    return _child(engine, "apps/v1", "Deployment", deployment_spec, annotations=annotations)


def build_engine_service(engine: EngineSpec) -> dict[str, Any]:
    """A ClusterIP Service over an engine's pods (debugging, metrics), owned by the TutorEngine."""
    port = {
        "name": PORT_NAME,
        "port": engine.spec["port"],
        "targetPort": PORT_NAME,
        "protocol": "TCP",
    }
    spec = {"type": "ClusterIP", "selector": selector_labels(engine.name), "ports": [port]}
    return _child(engine, "v1", "Service", spec)


def build_engine_pdb(engine: EngineSpec) -> dict[str, Any]:
    """A PodDisruptionBudget that keeps an engine's busy pods (those holding sessions).

    The operator labels a pod ``tutor.vts.dev/busy=true`` while sessions are pinned to it, so
    drains and autoscalers may evict idle pods but not busy ones; a busy pod that is not
    ready (crash-looping, say) may still be evicted (``unhealthyPodEvictionPolicy``).
    """
    spec = {
        "maxUnavailable": 0,
        "selector": {"matchLabels": {**selector_labels(engine.name), LABEL_BUSY: "true"}},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    return _child(engine, "policy/v1", "PodDisruptionBudget", spec)


def _child(
    engine: EngineSpec, api_version: str, kind: str, spec: dict[str, Any], **metadata: Any
) -> dict[str, Any]:
    """An object named and labelled as ``engine``'s, owned by the TutorEngine."""
    labels = engine_labels(engine.name, engine.spec["tutorId"])
    meta = {"name": engine.name, "labels": labels, **metadata}
    child = {"apiVersion": api_version, "kind": kind, "metadata": meta, "spec": spec}
    kopf.adopt(child, owner=engine.body)
    return child


def _placement(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The pod's optional scheduling and identity fields, only those that are set."""
    placement: dict[str, Any] = {}
    for field in ("imagePullSecrets", "serviceAccountName", "priorityClassName", "affinity"):
        if spec.get(field):
            placement[field] = copy.deepcopy(spec[field])
    spread = []
    for constraint in spec.get("topologySpreadConstraints") or []:
        constraint = copy.deepcopy(dict(constraint))
        constraint.setdefault("labelSelector", {"matchLabels": selector_labels(name)})
        spread.append(constraint)
    if spread:
        placement["topologySpreadConstraints"] = spread
    return placement


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _without_empty(value: Any) -> Any:
    if isinstance(value, Mapping):
        kept = {k: _without_empty(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


def spec_hash(effective: Mapping[str, Any]) -> str:
    """A digest of an effective spec that a newer operator with new empty fields keeps."""
    return _digest(_without_empty(effective))


def template_hash(template: Mapping[str, Any]) -> str:
    """A digest of a pod template as this operator version builds it."""
    return _digest(template)


def deployment_replacement(
    live: Mapping[str, Any], built: Mapping[str, Any], replicas: int
) -> dict[str, Any]:
    """What to PUT over ``live`` so it is ``built`` (fields ``built`` lacks disappear).

    It names ``live``'s ``resourceVersion`` (a concurrent change makes it a 409) and keeps
    what others own: labels and annotations the operator does not set (the Deployment
    controller's revision, say), finalizers, and its status.
    """
    meta = live.get("metadata") or {}
    new = copy.deepcopy(dict(built))
    new_meta = new["metadata"]
    new_meta["resourceVersion"] = meta.get("resourceVersion")
    new_meta["labels"] = {**(meta.get("labels") or {}), **new_meta["labels"]}
    new_meta["annotations"] = {**(meta.get("annotations") or {}), **new_meta["annotations"]}
    for field in ("namespace", "uid", "finalizers"):
        if meta.get(field):
            new_meta[field] = copy.deepcopy(meta[field])
    new["spec"]["replicas"] = replicas
    return new
