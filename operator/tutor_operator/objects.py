"""Pure manifest builders: a TutorEngine (and the operator's settings) in, plain dicts out."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import kopf

from . import API_VERSION
from .decisions import Scaling
from .names import (
    CONTAINER,
    ENGINE_KIND,
    LABEL_ORIGIN,
    LABEL_TUTOR_ID,
    ORIGIN_DEFAULTS,
    PORT_NAME,
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
            "cpu": settings.cpu,
            "memory": settings.memory,
        },
        "nodeSelector": dict(settings.node_selector),
        "tolerations": copy.deepcopy(settings.tolerations),
        "models": {
            "llm": {
                "backend": settings.llm_backend,
                "model": settings.llm_model,
                "baseUrl": settings.llm_base_url,
            },
            "asr": {"backend": settings.asr_backend, "model": settings.asr_model},
            "tts": {"backend": settings.tts_backend, "model": settings.tts_model},
        },
    }


def effective_spec(spec: Mapping[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """``spec`` with every omitted field (nested in resources and models) from the defaults."""
    merged = default_engine_spec(int(spec["tutorId"]), settings)
    for key, value in spec.items():
        if key == "models":
            for part, fields in value.items():
                merged["models"][part] = {**merged["models"].get(part, {}), **fields}
        elif key == "resources":
            merged["resources"].update(value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


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


def spec_error(engine: Mapping[str, Any]) -> str | None:
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
    """The engine container's environment: identity, models, API key, then ``spec.env``."""
    env: dict[str, dict[str, Any]] = {}

    def put(name: str, value: Any) -> None:
        env[name] = {"name": name, "value": str(value)}

    put("ENGINE_TUTOR_ID", spec["tutorId"])
    put("ENGINE_HOST", "0.0.0.0")
    put("ENGINE_PORT", spec["port"])
    for (part, field), name in _MODEL_ENV.items():
        value = spec["models"].get(part, {}).get(field)
        if value not in (None, ""):
            put(name, value)
    if settings.api_key_secret:
        ref = {"name": settings.api_key_secret, "key": settings.api_key_secret_key}
        env["ENGINE_API_KEY"] = {"name": "ENGINE_API_KEY", "valueFrom": {"secretKeyRef": ref}}
    for extra in spec.get("env") or []:
        put(extra["name"], extra.get("value", ""))
    return list(env.values())


def _resources(spec: Mapping[str, Any]) -> dict[str, Any]:
    res = spec["resources"]
    requests = {"cpu": res["cpu"], "memory": res["memory"]}
    limits = {"memory": res["memory"]}
    if res["gpuCount"]:
        requests[res["gpuResourceName"]] = limits[res["gpuResourceName"]] = str(res["gpuCount"])
    return {"requests": requests, "limits": limits}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def build_engine_deployment(
    engine: Mapping[str, Any], settings: OperatorSettings, replicas: int
) -> dict[str, Any]:
    """The Deployment of an engine's pods, owned by the TutorEngine."""
    name = engine["metadata"]["name"]
    spec = effective_spec(engine["spec"], settings)
    labels = engine_labels(name, spec["tutorId"])
    container = {
        "name": CONTAINER,
        "image": spec["image"],
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": PORT_NAME, "containerPort": spec["port"], "protocol": "TCP"}],
        "env": engine_env(spec, settings),
        "resources": _resources(spec),
        "startupProbe": _probe("/healthz", 5, 60),
        "livenessProbe": _probe("/healthz", 10, 6),
        "readinessProbe": _probe("/readyz", 5, 3),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
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
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": _RUN_AS,
                        "runAsGroup": _RUN_AS,
                        "fsGroup": _RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "nodeSelector": spec["nodeSelector"],
                    "tolerations": spec["tolerations"],
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
    kopf.adopt(deployment, owner=dict(engine))
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


def deployment_template_patch(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch bringing an existing Deployment's labels and pod template up to date."""
    return {
        "metadata": {"labels": deployment["metadata"]["labels"]},
        "spec": {"template": deployment["spec"]["template"]},
    }
