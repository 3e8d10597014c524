"""Operator settings: environment variables with the ``TUTOR_OPERATOR_`` prefix (and ``.env``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """Where the operator watches, how fast it reconciles, and the defaults for new engines.

    Dict and list fields are read from JSON, e.g.
    ``TUTOR_OPERATOR_NODE_SELECTOR='{"gpu": "a100"}'``.
    """

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

    # Defaults for TutorEngines the operator creates and for fields an administrator omits.
    engine_image: str = "ghcr.io/vts/tutor-engine:0.1.0"
    engine_port: int = Field(8000, ge=1, le=65535)
    engine_log_format: Literal["", "text", "json"] = Field(
        "", description="LOG_FORMAT of engine pods (json or text); empty: the engine's default."
    )
    engine_otlp_endpoint: str = Field(
        "",
        description="OTEL_EXPORTER_OTLP_ENDPOINT of engine pods (traces over OTLP HTTP); "
        "empty: no traces.",
    )
    gpu_count: int = Field(1, ge=0)
    gpu_resource_name: str = "nvidia.com/gpu"
    cpu: str = "2"
    memory: str = "16Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    image_pull_secrets: list[dict[str, str]] = Field(
        default_factory=list, description='Of engine pods, e.g. [{"name": "regcred"}].'
    )
    service_account: str = Field(
        "", description="ServiceAccount of engine pods (no token is mounted); empty: default."
    )
    priority_class: str = Field("", description="PriorityClass of engine pods; empty: none.")
    affinity: dict[str, Any] = Field(default_factory=dict, description="Of engine pods.")
    topology_spread: list[dict[str, Any]] = Field(
        default_factory=list,
        description="topologySpreadConstraints of engine pods; a constraint without a "
        "labelSelector selects the engine's own pods.",
    )
    disruption_budget: bool = Field(
        True, description="A PodDisruptionBudget per engine that keeps its busy pods."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    )
    gpu_claim_template: str = Field(
        "",
        description="ResourceClaimTemplate (DRA) whose GPU both containers of a pod share; "
        "empty requests gpu_count of gpu_resource_name through the device plugin.",
    )
    llm_backend: Literal["mock", "openai"] = "openai"
    llm_model: str = ""
    llm_base_url: str = Field(
        "", description="OpenAI-compatible server of the engines; empty: the vLLM sidecar."
    )
    # The vLLM sidecar: engines with the openai backend and no llm_base_url run one.
    vllm_enabled: bool = Field(
        True, description="Allow the vLLM sidecar; false requires an llm_base_url for openai."
    )
    vllm_image: str = "vllm/vllm-openai:v0.11.0"
    vllm_model: str = "Qwen/Qwen2.5-7B-Instruct"
    vllm_port: int = Field(8001, ge=1, le=65535)
    vllm_args: list[str] = Field(default_factory=list, description="Extra vLLM arguments.")
    vllm_gpu_memory_utilization: float | None = Field(
        None, ge=0.05, le=1, description="None: 0.90 alone on the GPU, 0.80 shared, 0.70 with XTTS."
    )
    vllm_max_model_len: int = Field(0, ge=0, description="0: the model's own context length.")
    vllm_cpu: str = "4"
    vllm_memory: str = "32Gi"
    vllm_shm_size: str = "8Gi"
    vllm_cache_claim: str = Field("", description="PVC of the model cache; empty: an emptyDir.")
    vllm_cache_size: str = "100Gi"
    vllm_hf_token_secret: str = Field(
        "", description="Secret with an HF_TOKEN key, for gated models; empty sends none."
    )
    vllm_metrics: bool = Field(
        False,
        description="Serve the vLLM sidecar's /metrics beyond the pod: vLLM listens on all "
        "addresses with a container port named vllm, and its /v1 API needs the engine API key "
        "(VLLM_API_KEY; the engine sends it as ENGINE_LLM_API_KEY). False: loopback only.",
    )
    asr_backend: Literal["mock", "faster-whisper"] = "faster-whisper"
    asr_model: str = "large-v3"
    tts_backend: Literal["mock", "piper", "coqui"] = "piper"
    tts_model: str = ""
    model_load_seconds: int = Field(
        1800,
        ge=10,
        description="Most seconds an engine pod may take to load its models: the vLLM "
        "sidecar's startup probe allows this long to its first /health, and the engine waits "
        "this long for its LLM server (ENGINE_LLM_WAIT_SECONDS) before it exits with the error. "
        "The gateway's ENGINE_START_TIMEOUT_SECONDS must be at least this (README, 'Cold start "
        "and its budgets').",
    )
    min_replicas: int = Field(0, ge=0)
    max_replicas: int = Field(1, ge=1)
    max_sessions_per_replica: int = Field(8, ge=1)
    idle_timeout_seconds: int = Field(900, ge=0)
    idle_policy: Literal["ScaleToZero", "Delete"] = "ScaleToZero"
    api_key_secret: str = Field(
        "tutor-engine-key",
        description="Secret holding the engine API key (ENGINE_API_KEY); empty disables it.",
    )
    api_key_secret_key: str = "api-key"

    # Conversation history: the store every engine keeps it in, and how long it lives.
    history_url: str = Field(
        "",
        description="Redis/Valkey URL of the history store (ENGINE_HISTORY_URL), without a "
        "password; empty sets none (the engine's own default).",
    )
    history_password_secret: str = Field(
        "",
        description="Secret holding the store's password (ENGINE_HISTORY_PASSWORD, by "
        "reference); empty: none.",
    )
    history_password_key: str = "password"
    history_max_messages: int = Field(
        40, ge=0, description="Messages kept per conversation (ENGINE_MAX_HISTORY_MESSAGES)."
    )
    session_timeout_seconds: int = Field(
        3600, ge=1, description="The gateway's SESSION_TIMEOUT_SECONDS, for the history's TTL."
    )
    history_ttl_margin_seconds: int = Field(
        300,
        ge=0,
        description="How much longer than a session's timeout its history may live "
        "(ENGINE_SESSION_TTL_SECONDS = the timeout + this).",
    )
    # Stopping an engine pod (rollout, scale-down, node drain).
    prestop_seconds: int = Field(
        5,
        ge=0,
        description="Pause (preStop) before an engine pod's containers get SIGTERM, so endpoints "
        "and gateways stop routing to it first; 0: no preStop hook.",
    )
    drain_seconds: int = Field(
        20,
        ge=0,
        description="Most seconds an engine finishes its turns after SIGTERM "
        "(ENGINE_DRAIN_SECONDS); the pod's grace period covers it.",
    )
