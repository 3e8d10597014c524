"""Prometheus metrics of the gateway, on a registry of its own."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass
class GatewayMetrics:
    """What the gateway exports at ``/metrics``."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.sessions_created = Counter(
            "tutor_gateway_sessions_created_total", "Sessions created", registry=r
        )
        self.sessions_rejected = Counter(
            "tutor_gateway_sessions_rejected_total", "Creates refused at MAX_SESSIONS", registry=r
        )
        self.sessions_ended = Counter(
            "tutor_gateway_sessions_ended_total",
            "Sessions ended, by reason",
            ["reason"],
            registry=r,
        )
        self.connections = Gauge(
            "tutor_gateway_connections", "Open client WebSocket connections", registry=r
        )
        self.failovers = Counter(
            "tutor_gateway_failovers_total",
            "Engine connections lost while relaying, by outcome: resumed (on the restarted or "
            "another engine) or unavailable (no engine within ENGINE_START_TIMEOUT_SECONDS: 4503)",
            ["outcome"],
            registry=r,
        )
        self.limited = Counter(
            "tutor_gateway_limited_total",
            "Requests, sessions and WebSocket messages refused by an admission or rate limit, "
            "by limit (the setting's name in lower case, e.g. max_sessions_per_student)",
            ["limit"],
            registry=r,
        )
        self.ws_rejected = Counter(
            "tutor_gateway_ws_rejected_total",
            "WebSocket connections refused, by reason",
            ["reason"],
            registry=r,
        )
