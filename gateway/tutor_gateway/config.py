"""Gateway settings from the environment (and ``.env``), keeping the seed's variable names."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
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
        120,
        gt=0,
        description="How long a connection waits for its tutor's engine to be ready (start, "
        "model load; after a lost engine, for the next). Local mode derives the engines' LLM "
        "wait (ENGINE_LLM_WAIT_SECONDS) from it, a little shorter (README, 'Cold start and "
        "its budgets').",
    )
    engine_idle_timeout_seconds: float = Field(
        300, ge=0, description="Stop a tutor's engine after this long with no sessions."
    )
    max_message_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest client WebSocket frame relayed."
    )
    # Per-connection bounds of the relay (see README, "Limits and abuse").
    max_queued_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Bytes of client frames one connection may have waiting for its engine; "
        "past it the gateway stops reading that client (backpressure).",
    )
    max_connections_per_session: int = Field(
        2,
        ge=1,
        description="Open WebSockets per session on this gateway; a newer one closes the "
        "oldest with 4409.",
    )
    client_send_timeout_seconds: float = Field(
        30,
        gt=0,
        description="A frame the client does not take within this time closes its connection "
        "(4504) and frees what it had queued.",
    )
    engine_connect_timeout_seconds: float = Field(
        10,
        gt=0,
        description="Longest wait for one engine WebSocket handshake; a connection that "
        "times out is tried again until ENGINE_START_TIMEOUT_SECONDS.",
    )
    engine_idle_release_seconds: float = Field(
        30,
        ge=0,
        description="A connection on which nothing has passed either way for this long, "
        "with every message answered and no audio stream open, gives its engine connection "
        "up (its socket stays open; its next message opens another where the last left off); "
        "0 keeps engine connections as long as their clients.",
    )
    engine_liveness_timeout_seconds: float = Field(
        30,
        gt=0,
        description="Local mode: a live engine process is replaced only after failing its "
        "health checks for this long (a busy engine is not a dead one).",
    )
    reaper_interval_seconds: float = Field(
        5, gt=0, description="How often expired sessions and idle engines are looked for."
    )
    engine_command: str = Field(
        "", description="Local mode: command that starts an engine (default: this Python)."
    )
    state_dir: str = Field(
        ".tutor-state",
        description="Local mode: this gateway's state (sessions.db: the sessions; history.db: "
        "the engines' conversation history; engines/: a record per running engine, so a "
        "restart stops any its dead predecessor left); relative to the working directory.",
    )
    engine_history_url: str = Field(
        "",
        validation_alias="ENGINE_HISTORY_URL",
        description="Local mode: the engines' history store; default "
        "sqlite:////<absolute STATE_DIR>/history.db.",
    )
    kube_namespace: str = Field(
        "", description="Cluster mode: namespace of the sessions (default: the pod's own)."
    )
    kube_api_url: str = Field(
        "", description="Cluster mode: API server URL (default: in-cluster or kubeconfig)."
    )
    kube_api_token: str = Field(
        "", description="Cluster mode: bearer token for KUBE_API_URL (default: none)."
    )
    activity_patch_interval_seconds: float = Field(
        15,
        ge=0,
        description="Least time between two writes of a session's activity (cluster: "
        "lastActivity patches; local: sessions.db, at most SESSION_TIMEOUT_SECONDS / 4).",
    )
    # Cluster mode: Kubernetes API calls and the TutorSession cache (tutor_gateway.kube.reflector).
    kube_api_timeout_seconds: float = Field(
        10,
        gt=0,
        description="Cluster mode: longest wait to connect, send, or read each response of one "
        "Kubernetes API request (a REST call whose request times out is answered 503).",
    )
    kube_watch_timeout_seconds: int = Field(
        60,
        ge=1,
        description="Cluster mode: timeoutSeconds asked of the API server for each watch; "
        "when the server ends it, the watch resumes from the last resourceVersion seen.",
    )
    kube_watch_stale_seconds: float | None = Field(
        None,
        gt=0,
        description="Cluster mode: a watch that delivers nothing (no event, not even a "
        "bookmark) for this long is taken as stale or half-open: dropped and the sessions "
        "re-listed. Default KUBE_WATCH_TIMEOUT_SECONDS + 15. Set it below the watch timeout "
        "only for API servers that send bookmarks more often (Kubernetes: about once a minute).",
    )
    kube_retry_initial_seconds: float = Field(
        0.5,
        gt=0,
        description="Cluster mode: first back-off after a failed list or watch (doubling, "
        "jittered, up to KUBE_RETRY_MAX_SECONDS) before the sessions are re-listed.",
    )
    kube_retry_max_seconds: float = Field(
        30, gt=0, description="Cluster mode: longest back-off between two list attempts."
    )

    # Admission and rate limits (tutor_gateway.admission, .ratelimit; README, "Limits and abuse").
    max_sessions_per_student: int = Field(
        3, ge=1, description="Most sessions alive at once for one student_id (429 past it)."
    )
    max_sessions_per_tutor: int | None = Field(
        None,
        ge=1,
        description="Most sessions alive at once for one tutor_id (429 past it); default "
        "MAX_SESSIONS.",
    )
    max_concurrent_cold_starts: int = Field(
        2,
        ge=1,
        description="Most tutor engines starting at once. Local mode: further starts wait "
        "their turn (within ENGINE_START_TIMEOUT_SECONDS); cluster mode: a new session of a "
        "tutor with no ready engine is refused (429) while this many are starting.",
    )
    max_messages_per_second: float = Field(
        10,
        gt=0,
        description="Client WebSocket messages per second per session (all its connections), "
        "on average; a message over it is not forwarded and gets an error.",
    )
    max_messages_burst: int = Field(
        20,
        ge=1,
        description="Client WebSocket messages a session may send at once before "
        "MAX_MESSAGES_PER_SECOND applies.",
    )
    max_audio_bytes_per_second: float = Field(
        64000,
        gt=0,
        description="Streamed audio (binary WebSocket frames) per session, in bytes per second "
        "on average (64000: twice real time of 16 kHz PCM16); counted instead of "
        "MAX_MESSAGES_PER_SECOND; a frame over it is not forwarded and gets an error.",
    )
    max_audio_burst_bytes: int = Field(
        320000,
        ge=1024,
        description="Streamed audio bytes a session may send at once before "
        "MAX_AUDIO_BYTES_PER_SECOND applies (320000: 10 s of 16 kHz PCM16).",
    )
    max_requests_per_minute: int = Field(
        600,
        ge=1,
        description="Management API (/v1, /mgmt/v1) requests per minute per API key "
        "(Authorization header), or per client address without one (429 past it); up to this "
        "many at once.",
    )
    admission_retry_after_seconds: int = Field(
        30,
        ge=1,
        description="Retry-After sent with a refusal whose end cannot be foreseen (session "
        "counts, MAX_SESSIONS included, and cold starts).",
    )

    # HTTP and WebSocket transport limits (tutor_gateway.server; README, "Limits and abuse").
    max_request_body_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest REST request body; a larger one is answered 413 as soon as its "
        "Content-Length (or, chunked, its running size) passes this, without reading the rest.",
    )
    max_url_bytes: int = Field(
        8 * 1024,
        ge=256,
        description="Longest request target (path and query) of any HTTP request or WebSocket "
        "upgrade; a longer one is answered 414 and the connection closed.",
    )
    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        description="Most bytes of request header lines in total; more is answered 431 and the "
        "connection closed. WebSocket upgrades also get 431 for one header line over 8 KiB or "
        "more than 128 headers (the websockets library's limits).",
    )
    ws_max_frame_bytes: int | None = Field(
        None,
        description="Hard limit of one client WebSocket message, checked while it arrives and "
        "while it inflates (permessage-deflate); a larger one closes the connection with 1009. "
        "Default 2 x MAX_MESSAGE_BYTES; at least MAX_MESSAGE_BYTES.",
    )
    ws_per_message_deflate: bool = Field(
        True, description="Offer permessage-deflate compression to WebSocket clients."
    )

    # Access (tutor_gateway.auth; README, "Authentication").
    management_api_keys: SecretStr = Field(
        SecretStr(""),
        description="Management API keys, comma-separated: when any key is configured (here or "
        "in MANAGEMENT_API_KEYS_FILE), every /v1 and /mgmt/v1 call needs "
        "Authorization: Bearer <key> (401 otherwise). Empty: open, as in the seed.",
    )
    management_api_keys_file: str = Field(
        "",
        description="A file of management API keys, one a line (# comments); re-read within a "
        "second of a change, so keys rotate without a restart. Must exist at startup.",
    )
    metrics_require_key: bool = Field(
        False, description="GET /metrics needs a management API key too (when keys are set)."
    )
    allowed_origins: str = Field(
        "",
        description="Browser origins (comma-separated scheme://host[:port]) allowed to open the "
        "student WebSocket and to call REST cross-origin (CORS); a handshake from another "
        "Origin is refused with 403, one without Origin is allowed. Empty: any origin.",
    )

    demo_enabled: bool = Field(
        True, description="Serve the talk-to-a-tutor page GET /demo (the chart turns it off)."
    )

    log_level: str = "info"
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines as text or as JSON objects (time, level, component, logger, "
        "message, session, tutor_id); local engines get the same (ENGINE_LOG_FORMAT).",
    )

    @model_validator(mode="after")
    def _derive_and_check(self) -> GatewaySettings:
        """Fill the settings derived from others; check the bounds between them."""
        if self.max_queued_bytes < self.max_message_bytes:
            raise ValueError("MAX_QUEUED_BYTES must be at least MAX_MESSAGE_BYTES")
        if self.ws_max_frame_bytes is None:
            self.ws_max_frame_bytes = 2 * self.max_message_bytes
        if self.ws_max_frame_bytes < self.max_message_bytes:
            raise ValueError("WS_MAX_FRAME_BYTES must be at least MAX_MESSAGE_BYTES")
        if self.max_sessions_per_tutor is None:
            self.max_sessions_per_tutor = self.max_sessions
        if self.kube_watch_stale_seconds is None:
            self.kube_watch_stale_seconds = float(self.kube_watch_timeout_seconds + 15)
        if self.kube_retry_max_seconds < self.kube_retry_initial_seconds:
            raise ValueError("KUBE_RETRY_MAX_SECONDS must be at least KUBE_RETRY_INITIAL_SECONDS")
        if not self.websocket_url:
            self.websocket_url = f"ws://localhost:{self.management_api_port}/ws"
        self.websocket_url = self.websocket_url.rstrip("/")
        return self

    def engine_url(self, session_id: str) -> str:
        """The public WebSocket URL a client uses for a session."""
        return f"{self.websocket_url}/ws/{session_id}"

    def session_db_path(self) -> Path:
        """Local mode: the sessions' SQLite database."""
        return Path(self.state_dir) / "sessions.db"

    def local_engine_env(self) -> dict[str, str]:
        """Local mode: defaults for the engines' environment (the gateway's environment wins)."""
        url = self.engine_history_url or f"sqlite:///{Path(self.state_dir).resolve()}/history.db"
        ttl = engine_session_ttl(self.session_timeout_seconds)
        return {
            "ENGINE_HISTORY_URL": url,
            "ENGINE_SESSION_TTL_SECONDS": str(ttl),
            "ENGINE_DRAIN_SECONDS": str(ENGINE_DRAIN_SECONDS),
            "ENGINE_LLM_WAIT_SECONDS": str(engine_llm_wait(self.engine_start_timeout_seconds)),
            "ENGINE_LOG_FORMAT": self.log_format,
        }


ENGINE_TTL_MARGIN_SECONDS = 60.0
# Local mode: a stopped engine finishes its turns for ENGINE_DRAIN_SECONDS, inside the time the
# gateway gives it after SIGTERM before it is killed.
ENGINE_STOP_SECONDS = 5.0
ENGINE_DRAIN_SECONDS = ENGINE_STOP_SECONDS - 1.0


def engine_llm_wait(start_timeout: float) -> float:
    """Local mode: how long an engine waits for its LLM server (ENGINE_LLM_WAIT_SECONDS): a
    little less than the gateway waits for the engine (a tenth, at most 10 s, less), so the
    engine gives up first and the client's 4503 carries its error naming the LLM server."""
    return round(max(0.0, start_timeout - min(10.0, start_timeout / 10)), 1)


def engine_session_ttl(session_timeout: float) -> float:
    """How long an engine keeps an idle session's history: a little past the session's own
    expiry, so the gateway's DELETE normally comes first and the TTL only covers its absence."""
    return session_timeout + ENGINE_TTL_MARGIN_SECONDS
