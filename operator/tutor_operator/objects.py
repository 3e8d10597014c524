"""Pure manifest builders: a TutorEngine (and the operator's settings) in, plain dicts out."""

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


class SpecError(ValueError):
    """A permanent problem with an engine's spec that the schema may not catch."""


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """A TutorEngine resolved against the defaults once, with the facts its builders share."""

    body: kopf.Body  # the TutorEngine: the owner of what is built from it
    name: str
    spec: dict[str, Any]  # the effective spec (``effective_spec``)
    settings: OperatorSettings
    sidecar: bool  # the pod runs the vLLM sidecar
    claim: str  # the DRA ResourceClaimTemplate both containers share, or empty
    gpu_holder: str | None  # the container that requests device-plugin GPUs (``resolve``)
    engine_gpu: bool  # the engine container sees the pod's GPU


def resolve(engine: Mapping[str, Any], settings: OperatorSettings) -> EngineSpec:
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
    spec = effective_spec(raw, settings)
    llm = spec["models"]["llm"]
    wants_sidecar = llm["backend"] == "openai" and not llm["baseUrl"]  # else no vLLM sidecar
    if wants_sidecar and not settings.vllm_enabled:
        raise SpecError("spec.models.llm.baseUrl is required: the operator runs no vLLM sidecar")
    sidecar = wants_sidecar and settings.vllm_enabled
    if sidecar and llm["server"]["port"] == spec["port"]:
        raise SpecError("spec.models.llm.server.port must differ from spec.port (one pod network)")
    claim = spec["resources"].get("gpuClaimTemplate") or ""
    holder = None
    if spec["resources"]["gpuCount"] and not claim:
        holder = LLM_CONTAINER if sidecar else CONTAINER
    sees_gpu = bool(claim) or holder == CONTAINER
    body = kopf.Body(cast(kopf.RawBody, dict(engine)))
    return EngineSpec(body, name, spec, settings, sidecar, claim, holder, sees_gpu)


def checked(
    engine: Mapping[str, Any], settings: OperatorSettings
) -> tuple[EngineSpec | None, str | None]:
    """``resolve``'s result, or ``None`` and what it finds wrong with the spec."""
    try:
        return resolve(engine, settings), None
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


def engine_env(engine: EngineSpec) -> list[dict[str, Any]]:
    """The engine container's environment: identity, models, API key, history store and
    drain, then ``spec.env``.

    With the vLLM sidecar the LLM is ``http://127.0.0.1:<server port>/v1``; an engine that
    cannot see the pod's GPU (the sidecar holds it) runs its speech models on the CPU.
    Secrets (the API key, the store's password) are references, never values.
    """
    spec, settings = engine.spec, engine.settings
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
    if engine.sidecar:
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
    if not engine.engine_gpu:
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
        f"--host={'0.0.0.0' if engine.settings.vllm_metrics else '127.0.0.1'}",
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
    settings = engine.settings
    server = engine.spec["models"]["llm"]["server"]
    env: list[dict[str, Any]] = [
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
    return {
        "name": LLM_CONTAINER,
        "image": server["image"],
        "imagePullPolicy": "IfNotPresent",
        **exposed,
        "args": vllm_args(engine),
        "env": env,
        "resources": _resources(server["cpu"], server["memory"], engine, LLM_CONTAINER),
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


def _llm_volumes(engine: EngineSpec) -> list[dict[str, Any]]:
    settings = engine.settings
    claim = engine.spec["models"]["llm"]["server"].get("cacheClaim")
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


def build_engine_deployment(engine: EngineSpec, replicas: int) -> dict[str, Any]:
    """The Deployment of an engine's pods, owned by the TutorEngine.

    A stopping pod pauses (preStop) so routing to it stops, then the engine drains; its grace
    period covers both (``termination_grace_seconds``).
    """
    name, spec, settings = engine.name, engine.spec, engine.settings
    labels = engine_labels(name, spec["tutorId"])
    res = spec["resources"]
    env = engine_env(engine)
    prestop, drain = settings.prestop_seconds, drain_seconds(env, settings.drain_seconds)
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
    deployment: dict[str, Any] = {
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
    kopf.adopt(deployment, owner=engine.body)
    deployment["metadata"]["annotations"] = {
        SPEC_HASH: spec_hash(spec),
        TEMPLATE_HASH: template_hash(deployment["spec"]["template"]),
    }
    return deployment


def build_engine_service(engine: EngineSpec) -> dict[str, Any]:
    """A ClusterIP Service over an engine's pods (debugging, metrics), owned by the TutorEngine."""
    name, spec = engine.name, engine.spec
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
    kopf.adopt(service, owner=engine.body)
    return service


def build_engine_pdb(engine: EngineSpec) -> dict[str, Any]:
    """A PodDisruptionBudget that keeps an engine's busy pods (those holding sessions).

    The operator labels a pod ``tutor.vts.dev/busy=true`` while sessions are pinned to it, so
    drains and autoscalers may evict idle pods but not busy ones; a busy pod that is not
    ready (crash-looping, say) may still be evicted (``unhealthyPodEvictionPolicy``).
    """
    name, spec = engine.name, engine.spec
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
    kopf.adopt(pdb, owner=engine.body)
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
