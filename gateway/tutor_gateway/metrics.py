"""Prometheus metrics of the gateway, on a registry of its own.

Names, labels and buckets are the shared contract of the dashboards and alerts (README,
"Monitoring"). Labels stay bounded: a tutor id, a route template, a reason; never a session
or student id.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from tutor_contract.metrics import FAST_BUCKETS, START_BUCKETS

# ``state`` of tutor_gateway_sessions: waiting for an engine, or routed to a ready one.
STATE_PENDING = "pending"
STATE_ACTIVE = "active"
SESSION_STATES = (STATE_PENDING, STATE_ACTIVE)

# ``direction`` of the relay counters.
CLIENT_TO_ENGINE = "client_to_engine"
ENGINE_TO_CLIENT = "engine_to_client"

# ``outcome`` of tutor_gateway_engine_wait_seconds.
WAIT_READY = "ready"
WAIT_TIMEOUT = "timeout"

# ``route`` of the HTTP metrics for a path no route matches (bounded cardinality).
OTHER_ROUTE = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

SessionCounts = Mapping[tuple[int, str], int]  # (tutor id, state) -> sessions


class SessionsCollector(Collector):
    """``tutor_gateway_sessions{tutor_id,state}``: the sessions in the store at scrape time.

    The local store is asynchronous (a database thread), so the ``/metrics`` handler counts
    the store just before it renders (``Gateway.count_sessions``, either mode) and this
    collector reports that count. Every tutor with sessions has both states (0 included), so
    a query on either state finds the series.
    """

    def __init__(self) -> None:
        self.counts: SessionCounts = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "tutor_gateway_sessions",
            "Sessions in the store, by tutor and state (pending: no engine ready yet; active)",
            labels=["tutor_id", "state"],
        )
        counts = dict(self.counts)
        for tutor_id in sorted({tutor for tutor, _ in counts}):
            for state in SESSION_STATES:
                family.add_metric([str(tutor_id), state], counts.get((tutor_id, state), 0))
        yield family

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self.collect()  # its name, checked for clashes at registration


def count_states(states: Iterable[tuple[int, bool]]) -> dict[tuple[int, str], int]:
    """(tutor id, engine ready) per session → sessions by (tutor id, state)."""
    return dict(Tally((tutor, STATE_ACTIVE if ready else STATE_PENDING) for tutor, ready in states))


@dataclass
class GatewayMetrics:
    """What the gateway exports at ``/metrics``."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.sessions = SessionsCollector()
        r.register(self.sessions)
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
        self.engine_releases = Counter(
            "tutor_gateway_engine_releases_total",
            "Engine connections given up by sessions idle for ENGINE_IDLE_RELEASE_SECONDS (the "
            "client's socket stays open; its next frame opens another)",
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
        self.relay_frames = Counter(
            "tutor_gateway_relay_frames_total",
            "WebSocket frames relayed, by direction (client_to_engine, engine_to_client); "
            "the gateway's own receipts and trace frames are not counted",
            ["direction"],
            registry=r,
        )
        self.relay_bytes = Counter(
            "tutor_gateway_relay_bytes_total",
            "Payload bytes of the frames relayed, by direction",
            ["direction"],
            registry=r,
        )
        # Bound once: relayed() runs for every frame, and .labels() takes a lock and a lookup.
        self._relay_children = {
            direction: (self.relay_frames.labels(direction), self.relay_bytes.labels(direction))
            for direction in (CLIENT_TO_ENGINE, ENGINE_TO_CLIENT)
        }
        self.engine_wait = Histogram(
            "tutor_gateway_engine_wait_seconds",
            "A client connection's wait for its engine, from asking for it (at the start, or "
            "after losing one) to the engine's WebSocket handshake, by outcome (ready; timeout: "
            "no engine in time, the client got 4503)",
            ["outcome"],
            buckets=START_BUCKETS,
            registry=r,
        )
        for outcome in ("resumed", "unavailable"):  # every series from the start: no "No data"
            self.failovers.labels(outcome)
        for outcome in ("ready", "timeout"):
            self.engine_wait.labels(outcome)
        self.http_requests = Counter(
            "tutor_gateway_http_requests_total",
            "HTTP requests answered, by route template (other: no route), method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "tutor_gateway_http_request_duration_seconds",
            "Seconds from an HTTP request's arrival to the end of its response, by route "
            "template and method",
            ["route", "method"],
            buckets=FAST_BUCKETS,
            registry=r,
        )

    def relayed(self, direction: str, size: int) -> None:
        """Count one frame of ``size`` bytes relayed in ``direction``."""
        frames, size_total = self._relay_children[direction]
        frames.inc()
        size_total.inc(size)
