"""Operator settings: environment variables with the ``TUTOR_OPERATOR_`` prefix (and ``.env``).

The defaults of every engine are one JSON document, ``TUTOR_OPERATOR_ENGINE_DEFAULTS``: the
keys of the chart's ``engine`` values and what the chart derives (operator/README.md lists
them); an unknown or invalid key stops the operator at start.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic_settings import BaseSettings, SettingsConfigDict


class _Part(BaseModel):
    """A part of the engine defaults: camelCase keys (or field names), unknown keys refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid"
    )


class Gpu(_Part):
    count: int = Field(1, ge=0)
    resource_name: str = "nvidia.com/gpu"
    claim_template: str = Field("", description="DRA ResourceClaimTemplate both containers share.")


class Llm(_Part):
    backend: Literal["mock", "openai"] = "openai"
    model: str = ""
    base_url: str = Field("", description="OpenAI-compatible server; empty: the vLLM sidecar.")


class Asr(_Part):
    backend: Literal["mock", "faster-whisper"] = "faster-whisper"
    model: str = "large-v3"


class Tts(_Part):
    backend: Literal["mock", "piper", "coqui"] = "piper"
    model: str = ""


class Models(_Part):
    llm: Llm = Field(default_factory=Llm)
    asr: Asr = Field(default_factory=Asr)
    tts: Tts = Field(default_factory=Tts)


class VllmCache(_Part):
    existing_claim: str = Field("", description="PVC of the model cache; empty: an emptyDir.")
    size_limit: str = "100Gi"


class Vllm(_Part):
    """The vLLM sidecar of engines with the openai backend and no ``baseUrl``."""

    enabled: bool = Field(True, description="False requires a baseUrl for openai.")
    image: str = "vllm/vllm-openai:v0.11.0"
    model: str = "Qwen/Qwen2.5-7B-Instruct"
    port: int = Field(8001, ge=1, le=65535)
    extra_args: list[str] = Field(default_factory=list)
    gpu_memory_utilization: float | None = Field(
        None, ge=0.05, le=1, description="None: 0.90 alone on the GPU, 0.80 shared, 0.70 with XTTS."
    )
    max_model_len: int = Field(0, ge=0, description="0: the model's own context length.")
    cpu: str = "4"
    memory: str = "32Gi"
    shm_size: str = "8Gi"
    cache: VllmCache = Field(default_factory=VllmCache)
    hf_token_secret: str = ""
    metrics: bool = Field(
        False, description="Serve /metrics beyond the pod; its /v1 API then needs the engine key."
    )


class History(_Part):
    """The store engines keep conversations in, and how long they live."""

    url: str = Field("", description="ENGINE_HISTORY_URL, no password; empty sets none.")
    password_secret: str = Field("", description="Secret of ENGINE_HISTORY_PASSWORD; empty: none.")
    password_key: str = "password"
    max_messages: int = Field(40, ge=0)
    session_timeout_seconds: int = Field(3600, ge=1, description="The gateway's, for the TTL.")
    ttl_margin_seconds: int = Field(300, ge=0)


class EngineDefaults(_Part):
    """Defaults of TutorEngines the operator creates and of fields an administrator omits."""

    image: str = "ghcr.io/vts/tutor-engine:0.1.0"
    port: int = Field(8000, ge=1, le=65535)
    log_format: Literal["", "text", "json"] = Field("", description="Empty: the engine's own.")
    otlp_endpoint: str = Field("", description="OTLP HTTP endpoint of traces; empty: none.")
    gpu: Gpu = Field(default_factory=Gpu)
    cpu: str = "2"
    memory: str = "16Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    )
    image_pull_secrets: list[dict[str, str]] = Field(default_factory=list)
    service_account_name: str = ""
    priority_class_name: str = ""
    affinity: dict[str, Any] = Field(default_factory=dict)
    topology_spread_constraints: list[dict[str, Any]] = Field(default_factory=list)
    disruption_budget: bool = True
    models: Models = Field(default_factory=Models)
    min_replicas: int = Field(0, ge=0)
    max_replicas: int = Field(1, ge=1)
    max_sessions_per_replica: int = Field(8, ge=1)
    idle_timeout_seconds: int = Field(900, ge=0)
    idle_policy: Literal["ScaleToZero", "Delete"] = "ScaleToZero"
    pre_stop_seconds: int = Field(5, ge=0)
    drain_seconds: int = Field(20, ge=0)
    model_load_timeout_seconds: int = Field(1800, ge=10)
    api_key_secret: str = Field("tutor-engine-key", description="Empty disables the API key.")
    api_key_secret_key: str = "api-key"
    vllm: Vllm = Field(default_factory=Vllm)
    history: History = Field(default_factory=History)


class OperatorSettings(BaseSettings):
    """Where the operator watches, how fast it reconciles, and the defaults for new engines."""

    model_config = SettingsConfigDict(env_prefix="TUTOR_OPERATOR_", env_file=".env", extra="ignore")

    namespace: str = Field("", description="Namespace to watch; empty watches all namespaces.")
    api_server: str = Field(
        "", description="API server URL without TLS checks (tests); else in-cluster/kubeconfig."
    )
    api_token: str = Field(
        "", description="Bearer token for api_server (tests); in a pod the service account's."
    )
    standalone: bool = Field(True, description="Skip kopf peering (run a single replica).")
    reconcile_interval: float = Field(
        2.0, gt=0, description="Seconds between engine reconciliations (assignment, scaling)."
    )
    resync_interval: float = Field(
        20.0,
        gt=0,
        description="Seconds between re-lists that drop what the watches missed (deletions "
        "during a watch gap); also how long such a stale entry can last.",
    )
    api_timeout: float = Field(
        10.0, gt=0, description="Seconds one API call of the operator may take, at most."
    )
    api_connect_timeout: float = Field(
        5.0, gt=0, description="Seconds to connect to the API server (calls and watches)."
    )
    watch_timeout: float = Field(
        300.0, gt=0, description="Seconds one watch request lasts before it is renewed."
    )
    metrics_port: int = Field(
        8081,
        ge=0,
        le=65535,
        description="Port of the operator's Prometheus metrics (/metrics, on all interfaces); "
        "0 serves none.",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="The operator's log lines: kopf's text format, or kopf's JSON format "
        "(with time, level, component, logger beside kopf's own fields); redacted either way.",
    )
    engine_defaults: EngineDefaults = Field(
        default_factory=EngineDefaults, description="TUTOR_OPERATOR_ENGINE_DEFAULTS, JSON."
    )


def unknown_variables(names: Iterable[str]) -> list[str]:
    """The ``TUTOR_OPERATOR_*`` names among ``names`` that are no setting (say, an engine
    default from before they became ``TUTOR_OPERATOR_ENGINE_DEFAULTS``): they are ignored."""
    prefix = OperatorSettings.model_config.get("env_prefix", "")
    fields = {name.upper() for name in OperatorSettings.model_fields}
    return sorted(
        name for name in names if name.startswith(prefix) and name[len(prefix) :] not in fields
    )
