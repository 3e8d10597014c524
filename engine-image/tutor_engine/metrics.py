"""Prometheus metrics of one engine, on a registry of its own (several apps may share a process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class EngineMetrics:
    """Counters and timings the engine exports at ``/metrics``."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.messages = Counter(
            "tutor_engine_messages_total", "Client messages handled, by type", ["type"], registry=r
        )
        self.errors = Counter(
            "tutor_engine_errors_total", "Error messages sent, by reason", ["reason"], registry=r
        )
        self.turn_seconds = Histogram(
            "tutor_engine_turn_seconds", "Time to answer one message, by type", ["type"], registry=r
        )
        self.connections = Gauge(
            "tutor_engine_connections", "Open WebSocket connections", registry=r
        )
        self.sessions = Gauge(
            "tutor_engine_sessions", "Sessions with an open connection to this engine", registry=r
        )
        self.ready = Gauge(
            "tutor_engine_ready",
            "1 while new sessions are taken (models loaded, not draining)",
            registry=r,
        )
        self.stage_seconds = Histogram(
            "tutor_engine_stage_seconds",
            "Time spent per pipeline stage (asr, retrieval, llm_first_token, llm, tts)",
            ["stage"],
            registry=r,
        )
        self.first_audio_seconds = Histogram(
            "tutor_engine_first_audio_seconds",
            "From a user's audio message to the first reply audio sent (whole reply or stream)",
            ["mode"],
            registry=r,
        )
        self.turns_running = Gauge(
            "tutor_engine_turns_running", "Turns holding one of the engine's turn slots", registry=r
        )
        self.turns_waiting = Gauge(
            "tutor_engine_turns_waiting",
            "Turns waiting for a turn slot (first come, first served)",
            registry=r,
        )
        self.history_errors = Counter(
            "tutor_engine_history_errors_total",
            "History store calls that failed or timed out, by op (load, save, end, purge)",
            ["op"],
            registry=r,
        )
        self.history_seconds = Histogram(
            "tutor_engine_history_seconds",
            "Time of successful history store calls, by op",
            ["op"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.interruptions = Counter(
            "tutor_engine_interruptions_total", "Replies cancelled by a newer message", registry=r
        )
