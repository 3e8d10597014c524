"""Prometheus metrics of the operator, served on ``metrics_port`` (``/metrics``).

- ``tutor_operator_reconciliations_total{kind,result}`` and
  ``tutor_operator_reconcile_duration_seconds{kind}``: kind ``TutorSession`` (a session's
  create/resume handler) or ``TutorEngine`` (one reconciliation of an engine); result ``ok``,
  ``retry`` (a temporary error: kopf or the loop tries again) or ``error``.
- ``tutor_operator_api_errors_total{code}``: the operator's own Kubernetes API calls that
  failed, by HTTP status (``timeout``: no answer in time; ``connection``: no HTTP answer at
  all). The 404s and 409s an idempotent reconciler expects are not errors.
- ``tutor_operator_sessions{phase}``, ``tutor_operator_engines{phase}``: the objects as the
  operator last saw them in its watches (every known phase, 0 included).
- ``tutor_operator_cold_start_seconds{tutor_id}``: a TutorSession's ``creationTimestamp`` to
  the operator's write that makes it Active, once per session.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import kopf
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from tutor_contract.crd import ENGINE_PHASES, PENDING, SESSION_PHASES
from tutor_contract.metrics import FAST_BUCKETS, START_BUCKETS

from .decisions import Listing, is_current

SESSION_KIND, ENGINE_KIND = "TutorSession", "TutorEngine"
OK, RETRY, ERROR = "ok", "retry", "error"
TIMEOUT, CONNECTION = "timeout", "connection"
# Sessions whose cold start was observed, remembered until their DELETED event (bounded in
# case a watch gap loses some of those events).
MAX_REMEMBERED_SESSIONS = 100_000


class PhaseCollector(Collector):
    """A gauge by ``phase`` of the objects of one kind, from a map uid → (phase, seen at).

    Entries go on their DELETED event; one whose event a watch gap lost goes once the
    operator's next re-list (``listings``, as the indices use) no longer shows it.
    """

    def __init__(self, name: str, documentation: str, phases: Iterable[str], listing: str) -> None:
        self.name, self.documentation = name, documentation
        self.phases = tuple(phases)
        self.listing = listing  # its kind's entry in ``listings``
        self.listings: Mapping[str, Listing] = {}  # ``OperatorMetrics.use_listings``
        self._seen: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()  # scrapes run on the metrics server's thread

    def seen(self, uid: str, phase: str | None) -> None:
        """The latest phase of object ``uid`` (none yet: Pending)."""
        with self._lock:
            self._seen[uid] = (phase or PENDING, time.monotonic())

    def forget(self, uid: str) -> None:
        """Object ``uid`` is gone."""
        with self._lock:
            self._seen.pop(uid, None)

    def counts(self) -> dict[str, int]:
        """Objects by phase now (every known phase, 0 included)."""
        listing = self.listings.get(self.listing)
        with self._lock:
            if listing is not None:
                stale = [u for u, (_, at) in self._seen.items() if not is_current(u, at, listing)]
                for uid in stale:
                    del self._seen[uid]
            phases = [phase for phase, _ in self._seen.values()]
        counts = dict.fromkeys(self.phases, 0)
        for phase in phases:
            counts[phase] = counts.get(phase, 0) + 1
        return counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=["phase"])
        for phase, count in self.counts().items():
            family.add_metric([phase], count)
        yield family

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.name, self.documentation, labels=["phase"])]


class OperatorMetrics:
    """What the operator exports, on a registry of its own (with the process's own metrics)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.reconciliations = Counter(
            "tutor_operator_reconciliations_total",
            "Reconciliations, by kind (TutorSession: a session's handler; TutorEngine: one pass "
            "over an engine) and result (ok, retry: a temporary error, error)",
            ["kind", "result"],
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "tutor_operator_reconcile_duration_seconds",
            "Seconds one reconciliation took, by kind",
            ["kind"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        for kind in (SESSION_KIND, ENGINE_KIND):
            self.reconcile_duration.labels(kind)
            for result in (OK, RETRY, ERROR):
                self.reconciliations.labels(kind, result)
        self.api_errors = Counter(
            "tutor_operator_api_errors_total",
            "The operator's Kubernetes API calls that failed, by HTTP status code (timeout: no "
            "answer in time; connection: no HTTP answer)",
            ["code"],
            registry=r,
        )
        self.cold_start = Histogram(
            "tutor_operator_cold_start_seconds",
            "Seconds from a TutorSession's creation to the operator making it Active (pinned "
            "to a ready engine pod), once per session, by tutor",
            ["tutor_id"],
            buckets=START_BUCKETS,
            registry=r,
        )
        self.sessions = PhaseCollector(
            "tutor_operator_sessions",
            "TutorSessions by phase, as the operator last saw them",
            SESSION_PHASES,
            "sessions",
        )
        self.engines = PhaseCollector(
            "tutor_operator_engines",
            "TutorEngines by phase, as the operator last saw them",
            ENGINE_PHASES,
            "engines",
        )
        r.register(self.sessions)
        r.register(self.engines)
        self._cold_started: dict[tuple[str, str], None] = {}

    def use_listings(self, listings: Mapping[str, Listing]) -> None:
        """Drop objects that the operator's re-lists (``Context.listings``) show gone."""
        self.sessions.listings = self.engines.listings = listings

    @contextlib.contextmanager
    def reconciling(self, kind: str) -> Iterator[None]:
        """Count and time one reconciliation of ``kind`` by how it ends."""
        started = time.perf_counter()
        result = ERROR
        try:
            yield
            result = OK
        except kopf.TemporaryError:
            result = RETRY
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled (shutdown): not a reconciliation
                result = ""
            raise
        finally:
            if result:
                self.reconciliations.labels(kind, result).inc()
                self.reconcile_duration.labels(kind).observe(time.perf_counter() - started)

    def api_error(self, code: int | str) -> None:
        """One failed API call."""
        self.api_errors.labels(str(code)).inc()

    def activated(self, namespace: str, name: str, created: dt.datetime, tutor_id: object) -> None:
        """The operator made session ``namespace/name`` Active: its cold start, if the first."""
        key = (namespace, name)
        if key in self._cold_started:
            return
        if len(self._cold_started) >= MAX_REMEMBERED_SESSIONS:
            self._cold_started.pop(next(iter(self._cold_started)))
        self._cold_started[key] = None
        seconds = (dt.datetime.now(dt.UTC) - created).total_seconds()
        self.cold_start.labels(str(tutor_id)).observe(max(0.0, seconds))

    def session_event(self, event_type: str, body: Mapping[str, Any]) -> None:
        """A TutorSession watch event: its phase, or its end."""
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        if event_type == "DELETED":
            self.sessions.forget(uid)
            self._cold_started.pop((meta.get("namespace", ""), meta.get("name", "")), None)
        else:
            self.sessions.seen(uid, (body.get("status") or {}).get("phase"))

    def engine_event(self, event_type: str, body: Mapping[str, Any]) -> None:
        """A TutorEngine watch event: its phase, or its end."""
        uid = str((body.get("metadata") or {}).get("uid", ""))
        if event_type == "DELETED":
            self.engines.forget(uid)
        else:
            self.engines.seen(uid, (body.get("status") or {}).get("phase"))

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``host:port`` from a thread of its own (0: not at all)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
