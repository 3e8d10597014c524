"""Gateway settings from the environment (and ``.env``), keeping the seed's variable names."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """One settings object for the gateway; field names are the environment variables."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    # The seed's variables.
    management_api_host: str = Field("0.0.0.0", description="Address the API listens on.")
    management_api_port: int = Field(9000, ge=1, le=65535, description="Port of REST and WS.")
    websocket_url: str = Field(
        "",
        description="Public WebSocket base: engine_url = WEBSOCKET_URL + '/ws/' + session_id. "
        "Default ws://localhost:<port>/ws, i.e. ws://localhost:9000/ws/ws/<id>.",
    )
    max_sessions: int = Field(10, ge=1, description="Most sessions alive at once.")
    session_timeout_seconds: float = Field(
        3600, gt=0, description="A session with no client activity for this long expires."
    )

    # Ours.
    gateway_mode: Literal["local", "kubernetes"] = Field(
        "local", description="local: engines are processes here; kubernetes: engine pods."
    )
    engine_api_key: str = Field(
        "",
        validation_alias="ENGINE_API_KEY",
        description="Secret sent to engines as X-Engine-Key; local mode makes one if empty.",
    )
    engine_start_timeout_seconds: float = Field(
        120, gt=0, description="How long a connection waits for its tutor's engine to be ready."
    )
    engine_idle_timeout_seconds: float = Field(
        300, ge=0, description="Stop a tutor's engine after this long with no sessions."
    )
    max_message_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest client WebSocket frame relayed."
    )
    reaper_interval_seconds: float = Field(
        5, gt=0, description="How often expired sessions and idle engines are looked for."
    )
    engine_command: str = Field(
        "", description="Local mode: command that starts an engine (default: this Python)."
    )
    kube_namespace: str = Field(
        "", description="Cluster mode: namespace of the sessions (default: the pod's own)."
    )
    kube_api_url: str = Field(
        "", description="Cluster mode: API server URL (default: in-cluster or kubeconfig)."
    )
    activity_patch_interval_seconds: float = Field(
        15, ge=0, description="Cluster mode: least time between two lastActivity patches."
    )
    log_level: str = "info"

    @model_validator(mode="after")
    def _default_websocket_url(self) -> GatewaySettings:
        if not self.websocket_url:
            self.websocket_url = f"ws://localhost:{self.management_api_port}/ws"
        self.websocket_url = self.websocket_url.rstrip("/")
        return self

    def engine_url(self, session_id: str) -> str:
        """The public WebSocket URL a client uses for a session."""
        return f"{self.websocket_url}/ws/{session_id}"
