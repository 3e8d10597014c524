"""Histogram buckets shared by the gateway, the engine and the operator (Prometheus, seconds).

One set per kind of wait, so the dashboards and alerts can use the same ``le`` boundaries
everywhere (a threshold of 0.5 s or 30 s lands on a bucket edge in every component).
"""

from __future__ import annotations

VOICE_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1, 1.5, 2, 3, 5, 7.5, 10, 20, 30, 60,
)  # fmt: skip
"""Voice latencies (pipeline stages, end of user audio → first reply audio/text): 10 ms to 60 s,
fine below a second where conversational latency is judged."""

START_BUCKETS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 3600,
)  # fmt: skip
"""Slow starts (session created → Active, model loads, a client's wait for its engine): 1 s to
an hour, since a cold GPU node plus an image pull and a model download can take many minutes."""

FAST_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
)  # fmt: skip
"""Quick calls (REST requests, reconciliations, store and Kubernetes API calls): 0.5 ms to 5 s."""

__all__ = ["FAST_BUCKETS", "START_BUCKETS", "VOICE_BUCKETS"]
