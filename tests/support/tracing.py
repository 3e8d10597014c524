"""Spans recorded in memory, for tests of the traces (``tutor_contract.tracing``).

OpenTelemetry lets a process set its global tracer provider once, and tracers obtained before
(module-level ``tracing.tracer(__name__)``) keep the first real provider they saw. So every
test here shares one SDK provider with one in-memory exporter, installed only for the block
and taken away after it: outside the block ``tracing.enabled()`` is false again (no trace
frames on the relay), and inside it every component in this process (an in-process gateway,
an in-process engine) records to the same exporter::

    with recorded_spans() as exporter:
        ...
        spans = exporter.get_finished_spans()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

_EXPORTER = InMemorySpanExporter()
_PROVIDER: TracerProvider | None = None


def _set_global(provider: TracerProvider | None) -> None:
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # no public way to unset it
    if provider is None:
        trace._TRACER_PROVIDER = None
    else:
        trace.set_tracer_provider(provider)


@contextlib.contextmanager
def recorded_spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the block, every finished span in the exporter (empty at the start)."""
    global _PROVIDER
    if _PROVIDER is None:
        _PROVIDER = TracerProvider(resource=Resource.create({SERVICE_NAME: "tests"}))
        _PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    _EXPORTER.clear()
    _set_global(_PROVIDER)
    try:
        yield _EXPORTER
    finally:
        _set_global(None)
        _EXPORTER.clear()
