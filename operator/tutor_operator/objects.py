"""Pure manifest builders: a TutorEngine (and the operator's settings) in, plain dicts out."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

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
from .settings import OperatorSettings

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


def startup_failures(load_seconds: int, period: int = STARTUP_PERIOD) -> int:
    """The vLLM sidecar's startup ``failureThreshold``: probes every ``period`` seconds for
    ``load_seconds`` (``model_load_seconds``, the engine's LLM wait too)."""
    return max(1, math.ceil(load_seconds / period))


def history_ttl_seconds(session_timeout: int, margin: int) -> int:
    """ENGINE_SESSION_TTL_SECONDS: a history outlives its session's idle timeout by ``margin``."""
    return session_timeout + margin


def termination_grace_seconds(prestop: int, drain: int) -> int:
    """An engine pod's ``terminationGracePeriodSeconds``: the preStop pause, the engine's
    drain (ENGINE_DRAIN_SECONDS), and a margin to close its sockets and exit."""
    return prestop + drain + GRACE_MARGIN_SECONDS


def default_engine_spec(tutor_id: int, settings: OperatorSettings) -> dict[str, Any]:
    """The full TutorEngine spec the operator's settings give a tutor."""
    return {
        "tutorId": tutor_id,
        "image": settings.engine_image,
        "port": settings.engine_port,
        "minReplicas": settings.min_replicas,
        "maxReplicas": settings.max_replicas,
        "maxSessionsPerReplica": settings.max_sessions_per_replica,
        "idleTimeoutSeconds": settings.idle_timeout_seconds,
        "idlePolicy": settings.idle_policy,
        "resources": {
            "gpuCount": settings.gpu_count,
            "gpuResourceName": settings.gpu_resource_name,
            "gpuClaimTemplate": settings.gpu_claim_template,
            "cpu": settings.cpu,
            "memory": settings.memory,
        },
        "nodeSelector": dict(settings.node_selector),
        "tolerations": copy.deepcopy(settings.tolerations),
        "imagePullSecrets": copy.deepcopy(settings.image_pull_secrets),
        "serviceAccountName": settings.service_account,
        "priorityClassName": settings.priority_class,
        "affinity": copy.deepcopy(settings.affinity),
        "topologySpreadConstraints": copy.deepcopy(settings.topology_spread),
        "models": {
            "llm": {
                "backend": settings.llm_backend,
                "model": settings.llm_model,
                "baseUrl": settings.llm_base_url,
                "server": _default_server(settings),
            },
            "asr": {"backend": settings.asr_backend, "model": settings.asr_model},
            "tts": {"backend": settings.tts_backend, "model": settings.tts_model},
        },
    }


def _default_server(settings: OperatorSettings) -> dict[str, Any]:
    server: dict[str, Any] = {
        "image": settings.vllm_image,
        "model": settings.vllm_model,
        "port": settings.vllm_port,
        "args": list(settings.vllm_args),
        "cpu": settings.vllm_cpu,
        "memory": settings.vllm_memory,
        "cacheClaim": settings.vllm_cache_claim,
    }
    if settings.vllm_gpu_memory_utilization is not None:
        server["gpuMemoryUtilization"] = settings.vllm_gpu_memory_utilization
    if settings.vllm_max_model_len:
        server["maxModelLen"] = settings.vllm_max_model_len
    return server


def _merge(default: Any, override: Any) -> Any:
    """``override`` over ``default``: objects merge key by key, anything else replaces."""
    if not isinstance(default, dict) or not isinstance(override, Mapping):
        return copy.deepcopy(override)
    merged = dict(default)
    for key, value in override.items():
        merged[key] = _merge(default.get(key), value)
    return merged


def effective_spec(spec: Mapping[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """``spec`` with every omitted field (nested in resources and models) from the defaults."""
    merged = default_engine_spec(int(spec["tutorId"]), settings)
    for key, value in spec.items():
        deep = key in ("models", "resources")
        merged[key] = _merge(merged[key], value) if deep else copy.deepcopy(value)
    return merged


def runs_llm_server(spec: Mapping[str, Any], settings: OperatorSettings) -> bool:
    """Whether an (effective) spec gets the vLLM sidecar: openai backend, no ``baseUrl``."""
    llm = spec["models"]["llm"]
    return settings.vllm_enabled and llm.get("backend") == "openai" and not llm.get("baseUrl")


def engine_scaling(engine: Mapping[str, Any], settings: OperatorSettings) -> Scaling:
    """The scaling parameters of a TutorEngine body."""
    spec = effective_spec(engine["spec"], settings)
    labels = (engine.get("metadata") or {}).get("labels") or {}
    return Scaling(
        min_replicas=spec["minReplicas"],
        max_replicas=spec["maxReplicas"],
        per_replica=spec["maxSessionsPerReplica"],
        idle_timeout=spec["idleTimeoutSeconds"],
        idle_policy=spec["idlePolicy"],
        deletable=labels.get(LABEL_ORIGIN) == ORIGIN_DEFAULTS,
    )


def spec_error(engine: Mapping[str, Any], settings: OperatorSettings) -> str | None:
    """A permanent problem with an engine's spec that the schema may not catch, or ``None``."""
    name = (engine.get("metadata") or {}).get("name")
    spec = engine.get("spec") or {}
    tutor_id = spec.get("tutorId")
    if not isinstance(tutor_id, int) or isinstance(tutor_id, bool) or tutor_id < 0:
        return f"spec.tutorId must be a non-negative integer, not {tutor_id!r}"
    if name != engine_name(tutor_id):
        return f"a TutorEngine for tutor {tutor_id} must be named {engine_name(tutor_id)}"
    if spec.get("minReplicas", 0) > spec.get("maxReplicas", spec.get("minReplicas", 0)):
        return "spec.minReplicas must not exceed spec.maxReplicas"
    full = effective_spec(spec, settings)
    llm = full["models"]["llm"]
    if llm["backend"] == "openai" and not llm["baseUrl"] and not settings.vllm_enabled:
        return "spec.models.llm.baseUrl is required: the operator runs no vLLM sidecar"
    if runs_llm_server(full, settings) and llm["server"]["port"] == full["port"]:
        return "spec.models.llm.server.port must differ from spec.port (one pod network)"
    return None


def build_default_engine(tutor_id: int, namespace: str, settings: OperatorSettings) -> dict:
    """A TutorEngine from the operator's defaults, labelled so idling may delete it."""
    return {
        "apiVersion": API_VERSION,
        "kind": ENGINE_KIND,
        "metadata": {
            "name": engine_name(tutor_id),
            "namespace": namespace,
            "labels": {LABEL_TUTOR_ID: str(tutor_id), LABEL_ORIGIN: ORIGIN_DEFAULTS},
        },
        "spec": default_engine_spec(tutor_id, settings),
    }


def engine_env(spec: Mapping[str, Any], settings: OperatorSettings) -> list[dict[str, Any]]:
    """The engine container's environment: identity, models, API key, history store and
    drain, then ``spec.env``.

    With the vLLM sidecar the LLM is ``http://127.0.0.1:<server port>/v1``; an engine that
    cannot see the pod's GPU (the sidecar holds it) runs its speech models on the CPU.
    Secrets (the API key, the store's password) are references, never values.
    """
    env: dict[str, dict[str, Any]] = {}

    def put(name: str, value: Any) -> None:
        env[name] = {"name": name, "value": str(value)}

    put("ENGINE_TUTOR_ID", spec["tutorId"])
    put("ENGINE_HOST", "0.0.0.0")
    put("ENGINE_PORT", spec["port"])
    put("ENGINE_EXIT_ON_LOAD_FAILURE", "true")
    put("ENGINE_LLM_WAIT_SECONDS", settings.model_load_seconds)  # as long as vLLM's startup
    for (part, field), name in _MODEL_ENV.items():
        value = spec["models"].get(part, {}).get(field)
        if value not in (None, ""):
            put(name, value)
    if runs_llm_server(spec, settings):
        server = spec["models"]["llm"]["server"]
        put("ENGINE_LLM_BASE_URL", f"http://127.0.0.1:{server['port']}/v1")
        put("ENGINE_LLM_MODEL", spec["models"]["llm"]["model"] or server["model"])
        if settings.vllm_metrics and settings.api_key_secret:
            # The exposed sidecar's /v1 API takes the engine key (VLLM_API_KEY).
            ref = {"name": settings.api_key_secret, "key": settings.api_key_secret_key}
            env["ENGINE_LLM_API_KEY"] = {
                "name": "ENGINE_LLM_API_KEY",
                "valueFrom": {"secretKeyRef": ref},
            }
    if not _engine_sees_gpu(spec, settings):
        put("ENGINE_ASR_DEVICE", "cpu")
        put("ENGINE_TTS_DEVICE", "cpu")
    if settings.api_key_secret:
        ref = {"name": settings.api_key_secret, "key": settings.api_key_secret_key}
        env["ENGINE_API_KEY"] = {"name": "ENGINE_API_KEY", "valueFrom": {"secretKeyRef": ref}}
    if settings.history_url:
        put("ENGINE_HISTORY_URL", settings.history_url)
        if settings.history_password_secret:
            ref = {"name": settings.history_password_secret, "key": settings.history_password_key}
            env["ENGINE_HISTORY_PASSWORD"] = {
                "name": "ENGINE_HISTORY_PASSWORD",
                "valueFrom": {"secretKeyRef": ref},
            }
    put("ENGINE_MAX_HISTORY_MESSAGES", settings.history_max_messages)
    ttl = history_ttl_seconds(settings.session_timeout_seconds, settings.history_ttl_margin_seconds)
    put("ENGINE_SESSION_TTL_SECONDS", ttl)
    put(DRAIN_ENV, settings.drain_seconds)
    if settings.engine_log_format:
        put("ENGINE_LOG_FORMAT", settings.engine_log_format)
    if settings.engine_otlp_endpoint:
        put("OTEL_EXPORTER_OTLP_ENDPOINT", settings.engine_otlp_endpoint)
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


def _gpu_holder(spec: Mapping[str, Any], settings: OperatorSettings) -> str | None:
    """The one container that requests the pod's device-plugin GPUs, or ``None``.

    The device plugin gives each device to exactly one container, so with the sidecar it is
    vLLM's. A DRA claim (``gpuClaimTemplate``) is shared by both containers instead.
    """
    res = spec["resources"]
    if not res["gpuCount"] or res.get("gpuClaimTemplate"):
        return None
    return LLM_CONTAINER if runs_llm_server(spec, settings) else CONTAINER


def _engine_sees_gpu(spec: Mapping[str, Any], settings: OperatorSettings) -> bool:
    res = spec["resources"]
    if res.get("gpuClaimTemplate"):
        return True
    return bool(res["gpuCount"]) and _gpu_holder(spec, settings) == CONTAINER


def _resources(cpu: str, memory: str, spec: Mapping[str, Any], gpus: bool) -> dict[str, Any]:
    res = spec["resources"]
    requests = {"cpu": cpu, "memory": memory}
    limits = {"memory": memory}
    resources: dict[str, Any] = {"requests": requests, "limits": limits}
    if res.get("gpuClaimTemplate"):
        resources["claims"] = [{"name": _GPU_CLAIM}]
    elif gpus:
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


def gpu_memory_utilization(spec: Mapping[str, Any], settings: OperatorSettings) -> float:
    """vLLM's ``--gpu-memory-utilization``: the spec's, else what the GPU's sharing leaves."""
    server = spec["models"]["llm"]["server"]
    if server.get("gpuMemoryUtilization") is not None:
        return float(server["gpuMemoryUtilization"])
    if not _engine_sees_gpu(spec, settings):
        return VLLM_GPU_ALONE
    xtts = spec["models"]["tts"].get("backend") == "coqui"
    return VLLM_GPU_SHARED_XTTS if xtts else VLLM_GPU_SHARED


def vllm_args(spec: Mapping[str, Any], settings: OperatorSettings) -> list[str]:
    """The vLLM server's command line (the image's entry point is the OpenAI server)."""
    llm = spec["models"]["llm"]
    server = llm["server"]
    args = [
        f"--model={server['model']}",
        # Only the engine, over the pod's loopback (probes exec inside); all addresses when
        # Prometheus scrapes its /metrics (vllm_metrics: /v1 then needs the engine key).
        f"--host={'0.0.0.0' if settings.vllm_metrics else '127.0.0.1'}",
        f"--port={server['port']}",
        f"--gpu-memory-utilization={gpu_memory_utilization(spec, settings):.2f}",
        f"--tensor-parallel-size={max(1, spec['resources']['gpuCount'])}",
    ]
    if llm.get("model") and llm["model"] != server["model"]:
        args.append(f"--served-model-name={llm['model']}")
    if server.get("maxModelLen"):
        args.append(f"--max-model-len={server['maxModelLen']}")
    return args + list(server.get("args") or [])


def build_llm_container(
    spec: Mapping[str, Any], settings: OperatorSettings, stop_after: int = 0
) -> dict[str, Any]:
    """The vLLM sidecar: OpenAI API on the pod's loopback for the engine container.

    Every container of a stopping pod gets SIGTERM at once (after its own preStop hook), so
    the sidecar pauses ``stop_after`` seconds, the engine's preStop and drain: the turns the
    engine finishes meanwhile still have their LLM.
    """
    server = spec["models"]["llm"]["server"]
    env = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/cache/huggingface"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
    ]
    if settings.vllm_hf_token_secret:
        ref = {"name": settings.vllm_hf_token_secret, "key": "HF_TOKEN"}
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    exposed: dict[str, Any] = {}
    if settings.vllm_metrics:
        # /metrics for Prometheus on a named port; /v1 needs the engine key from then on.
        port = {"name": LLM_PORT_NAME, "containerPort": server["port"], "protocol": "TCP"}
        exposed["ports"] = [port]
        if settings.api_key_secret:
            ref = {"name": settings.api_key_secret, "key": settings.api_key_secret_key}
            env.append({"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": ref}})
    holder = _gpu_holder(spec, settings) == LLM_CONTAINER
    return {
        "name": LLM_CONTAINER,
        "image": server["image"],
        "imagePullPolicy": "IfNotPresent",
        **exposed,
        "args": vllm_args(spec, settings),
        "env": env,
        "resources": _resources(server["cpu"], server["memory"], spec, holder),
        # Downloading and loading weights may take long: model_load_seconds to first /health.
        "startupProbe": _loopback_probe(
            server["port"], STARTUP_PERIOD, startup_failures(settings.model_load_seconds)
        ),
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


def _llm_volumes(spec: Mapping[str, Any], settings: OperatorSettings) -> list[dict[str, Any]]:
    claim = spec["models"]["llm"]["server"].get("cacheClaim")
    cache = (
        {"persistentVolumeClaim": {"claimName": claim}}
        if claim
        else {"emptyDir": {"sizeLimit": settings.vllm_cache_size}}
    )
    return [
        {"name": "model-cache", **cache},
        {"name": "vllm-tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.vllm_shm_size}},
    ]


def build_engine_deployment(
    engine: Mapping[str, Any], settings: OperatorSettings, replicas: int
) -> dict[str, Any]:
    """The Deployment of an engine's pods, owned by the TutorEngine.

    A stopping pod pauses (preStop) so routing to it stops, then the engine drains; its grace
    period covers both (``termination_grace_seconds``).
    """
    name = engine["metadata"]["name"]
    spec = effective_spec(engine["spec"], settings)
    labels = engine_labels(name, spec["tutorId"])
    res = spec["resources"]
    engine_gpus = _gpu_holder(spec, settings) == CONTAINER
    env = engine_env(spec, settings)
    prestop, drain = settings.prestop_seconds, drain_seconds(env, settings.drain_seconds)
    containers = [
        {
            "name": CONTAINER,
            "image": spec["image"],
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": PORT_NAME, "containerPort": spec["port"], "protocol": "TCP"}],
            "env": env,
            "resources": _resources(res["cpu"], res["memory"], spec, engine_gpus),
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
    if runs_llm_server(spec, settings):
        containers.append(build_llm_container(spec, settings, stop_after=prestop + drain))
        volumes += _llm_volumes(spec, settings)
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
    if res.get("gpuClaimTemplate"):
        pod_spec["resourceClaims"] = [
            {"name": _GPU_CLAIM, "resourceClaimTemplateName": res["gpuClaimTemplate"]}
        ]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels, "annotations": {}},
        "spec": {
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
                    "labels": dict(labels),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(spec["port"]),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }
    kopf.adopt(deployment, owner=dict(engine))
    deployment["metadata"]["annotations"] = {
        SPEC_HASH: spec_hash(spec),
        TEMPLATE_HASH: template_hash(deployment["spec"]["template"]),
    }
    return deployment


def build_engine_service(engine: Mapping[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """A ClusterIP Service over an engine's pods (debugging, metrics), owned by the TutorEngine."""
    name = engine["metadata"]["name"]
    spec = effective_spec(engine["spec"], settings)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": engine_labels(name, spec["tutorId"])},
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [
                {
                    "name": PORT_NAME,
                    "port": spec["port"],
                    "targetPort": PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }
    kopf.adopt(service, owner=dict(engine))
    return service


def build_engine_pdb(engine: Mapping[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """A PodDisruptionBudget that keeps an engine's busy pods (those holding sessions).

    The operator labels a pod ``tutor.vts.dev/busy=true`` while sessions are pinned to it, so
    drains and autoscalers may evict idle pods but not busy ones; a busy pod that is not
    ready (crash-looping, say) may still be evicted (``unhealthyPodEvictionPolicy``).
    """
    name = engine["metadata"]["name"]
    spec = effective_spec(engine["spec"], settings)
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "labels": engine_labels(name, spec["tutorId"])},
        "spec": {
            "maxUnavailable": 0,
            "selector": {"matchLabels": {**selector_labels(name), LABEL_BUSY: "true"}},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
    kopf.adopt(pdb, owner=dict(engine))
    return pdb


def _placement(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The pod's optional scheduling and identity fields, only those that are set."""
    placement: dict[str, Any] = {}
    if spec.get("imagePullSecrets"):
        placement["imagePullSecrets"] = copy.deepcopy(spec["imagePullSecrets"])
    if spec.get("serviceAccountName"):
        placement["serviceAccountName"] = spec["serviceAccountName"]
    if spec.get("priorityClassName"):
        placement["priorityClassName"] = spec["priorityClassName"]
    if spec.get("affinity"):
        placement["affinity"] = copy.deepcopy(spec["affinity"])
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
