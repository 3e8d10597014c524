"""Prometheus metrics of one engine, on a registry of its own (several apps may share a process).

Every metric carries ``tutor_id``: an engine serves one tutor, so the label is the same on all
of an engine's series, and dashboards group the fleet by it (never by session or student: their
number is unbounded). Latencies use the shared voice buckets (10 ms to 60 s), model loads the
start buckets, history store calls the fast ones (``tutor_contract.metrics``).

Call sites use the per-tutor views below, which add the label themselves:
``metrics.stage_seconds.labels("asr").observe(s)``, ``metrics.connections.inc()``.
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from tutor_contract.metrics import FAST_BUCKETS, VOICE_BUCKETS

TUTOR = "tutor_id"
STAGES = ("decode", "asr", "retrieval", "llm_first_token", "llm", "tts_first_chunk", "tts")
MODES = ("stream", "whole")  # how a reply is sent: streamed, or the seed's whole messages
INPUTS = ("audio", "text")  # what the user sent
ERROR_REASONS = ("protocol", "busy", "ended", "audio", "internal")
HISTORY_OPS = ("load", "save", "end", "purge")


class PerTutor:
    """A labelled metric seen from one tutor: ``labels(*values)`` adds the ``tutor_id`` last."""

    def __init__(self, family: Any, tutor_id: str) -> None:
        self.family = family
        self.tutor_id = tutor_id

    def labels(self, *values: str) -> Any:
        return self.family.labels(*values, self.tutor_id)


class EngineMetrics:
    """Counters, gauges and timings the engine exports at ``/metrics``, for one tutor."""

    def __init__(self, tutor_id: int | str = 0, registry: CollectorRegistry | None = None) -> None:
        self.tutor_id = str(tutor_id)
        self.registry = registry if registry is not None else CollectorRegistry()
        counter = functools.partial(self._metric, Counter)
        gauge = functools.partial(self._metric, Gauge)
        histogram = functools.partial(self._metric, Histogram, buckets=VOICE_BUCKETS)

        # Turns and their latency.
        self.turns = counter(
            "tutor_engine_turns_total",
            "Turns begun (a user message being answered), by input (audio, text)",
            "input",
        )
        self.messages = counter(
            "tutor_engine_messages_total", "Client messages answered, by type (audio, text)", "type"
        )
        self.turn_seconds = histogram(
            "tutor_engine_turn_seconds",
            "Time to answer one message (slot wait included), by type",
            "type",
        )
        self.stage_seconds = histogram(
            "tutor_engine_stage_seconds",
            "Time of each pipeline stage of a turn, observed once per turn: decode (audio "
            "to samples), asr (recognition), retrieval, llm_first_token, llm (whole "
            "generation), tts_first_chunk (synthesis of the first audio sent), tts (all "
            "synthesis of the reply)",
            "stage",
        )
        self.first_audio_seconds = histogram(
            "tutor_engine_first_audio_seconds",
            "The voice SLO: from a user's audio message fully received to the first reply "
            "audio sent, by mode (stream: first audio_chunk; whole: the audio message)",
            "mode",
        )
        self.first_text_seconds = histogram(
            "tutor_engine_first_text_seconds",
            "From a user message received to the first reply text sent (stream: first "
            "text_delta; whole: the text message), by mode and input",
            "mode",
            "input",
        )
        self.interruptions = counter(
            "tutor_engine_interruptions_total", "Replies cancelled by a newer message (barge-in)"
        )
        self.errors = counter(
            "tutor_engine_errors_total",
            "Error messages sent, by reason: protocol (bad frame), busy (too many waiting), "
            "ended (session ended), audio (undecodable, too long, or no speech), internal",
            "reason",
        )

        # Audio and tokens: what the engine's work amounts to.
        self.audio_input_seconds = counter(
            "tutor_engine_audio_input_seconds_total", "Seconds of user audio decoded"
        )
        self.audio_output_seconds = counter(
            "tutor_engine_audio_output_seconds_total", "Seconds of reply audio synthesised"
        )
        self.prompt_tokens = counter(
            "tutor_engine_llm_prompt_tokens_total",
            "Prompt tokens of the engine's LLM requests (the LLM's usage report)",
        )
        self.completion_tokens = counter(
            "tutor_engine_llm_completion_tokens_total",
            "Completion tokens the LLM generated for the engine (its usage report)",
        )

        # What the engine holds now.
        self.connections = gauge("tutor_engine_connections", "Open WebSocket connections")
        self.sessions = gauge(
            "tutor_engine_sessions", "Sessions with an open connection to this engine"
        )
        self.ready = gauge(
            "tutor_engine_ready", "1 while new sessions are taken (models loaded, not draining)"
        )
        self.turns_running = gauge(
            "tutor_engine_turns_running", "Turns holding one of the engine's turn slots"
        )
        self.turns_waiting = gauge(
            "tutor_engine_turns_waiting", "Turns waiting for a turn slot (first come, first served)"
        )
        self.model_load_seconds = gauge(
            "tutor_engine_model_load_seconds",
            "How long loading and warming each model took (set once loaded), by model "
            "(llm, asr, tts, kb)",
            "model",
        )

        # The history store.
        self.history_errors = counter(
            "tutor_engine_history_errors_total",
            "History store calls that failed or timed out, by op (load, save, end, purge)",
            "op",
        )
        self.history_seconds = histogram(
            "tutor_engine_history_seconds",
            "Time of successful history store calls, by op",
            "op",
            buckets=FAST_BUCKETS,
        )

        # Every bounded label value exists from the start (at zero), so rates and quantiles
        # over them return data before the first turn, error or interruption.
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for mode in MODES:
            self.first_audio_seconds.labels(mode)
            for kind in INPUTS:
                self.first_text_seconds.labels(mode, kind)
        for kind in INPUTS:
            self.turns.labels(kind)
            self.messages.labels(kind)
            self.turn_seconds.labels(kind)
        for reason in ERROR_REASONS:
            self.errors.labels(reason)
        for op in HISTORY_OPS:
            self.history_errors.labels(op)
            self.history_seconds.labels(op)

    def _metric(self, kind: type, name: str, doc: str, *labels: str, **options: Any) -> Any:
        """A family labelled ``labels`` and ``tutor_id``: this tutor's ``PerTutor`` view, or
        with no other label its one series."""
        family = kind(name, doc, [*labels, TUTOR], registry=self.registry, **options)
        return PerTutor(family, self.tutor_id) if labels else family.labels(self.tutor_id)
