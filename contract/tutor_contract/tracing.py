"""OpenTelemetry traces, off by default: on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

Each component calls :func:`configure` once at start. The SDK reads the standard ``OTEL_*``
variables itself (endpoint, headers, sampler, resource attributes); spans are exported over OTLP
HTTP in batches. Without the endpoint nothing is installed and every span is a no-op, so the code
that makes spans costs next to nothing. Tests install their own provider (an in-memory exporter)
with :func:`install`.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def install(service_name: str, processor: SpanProcessor) -> TracerProvider:
    """Make a provider that sends every span of ``service_name`` to ``processor`` the global one."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider


def configure(service_name: str) -> bool:
    """Export spans over OTLP when an endpoint is configured; whether tracing is now on."""
    if not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    install(
        os.environ.get("OTEL_SERVICE_NAME") or service_name, BatchSpanProcessor(OTLPSpanExporter())
    )
    log.info("traces go to the OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT)")
    return True


def enabled() -> bool:
    """Whether spans are recorded (a provider is installed), so carriers are worth sending."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def tracer(name: str) -> trace.Tracer:
    """The tracer of a module (a no-op one while tracing is off)."""
    return trace.get_tracer(name)


def inject(context: Context | None = None) -> dict[str, str]:
    """The W3C carrier (``traceparent``, ``tracestate``) of ``context`` (default: the current)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def extract(carrier: dict[str, str] | None) -> Context | None:
    """The parent context a carrier names, or ``None`` without one."""
    return propagate.extract(carrier) if carrier else None


def fastapi_options() -> dict[str, Any]:
    """``FastAPI(**…)`` keywords that turn FastAPI's own telemetry off: from 0.165 it traces
    every request and WebSocket once a provider is installed. Our spans are the turns
    (``gateway.turn``, ``engine.turn``); a WebSocket lives as long as its session, and probes
    and scrapes would drown the traces."""
    from fastapi import FastAPI  # only the servers need it, not the operator

    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    return {}
