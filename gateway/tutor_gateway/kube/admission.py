"""Cluster mode's cold-start admission: MAX_CONCURRENT_COLD_STARTS over the TutorEngine cache.

Counted from this replica's caches (TutorEngines and TutorSessions, both watch-fed): replicas
do not coordinate, so with N gateway replicas up to N x MAX_CONCURRENT_COLD_STARTS tutors may
start in the moment before their watches see each other's sessions.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..admission import EngineState, Refusal, cold_start_refusal
from ..service import ColdStartCheck
from ..sessions import Session
from .reflector import Obj, Reflector
from .resources import ready_endpoints


def engine_states(objects: Mapping[str, Obj]) -> dict[int, EngineState]:
    """Each TutorEngine's phase and whether it has a ready pod, by tutor id."""
    states: dict[int, EngineState] = {}
    for obj in objects.values():
        try:
            tutor = int((obj.get("spec") or {})["tutorId"])
        except (KeyError, TypeError, ValueError):
            continue
        phase = (obj.get("status") or {}).get("phase")
        states[tutor] = EngineState(phase, bool(ready_endpoints(obj)))
    return states


def cluster_cold_starts(engines: Reflector, limit: int, retry_after: int) -> ColdStartCheck:
    """The gateway's cold-start check in cluster mode (``Gateway.cold_starts``)."""

    def check(tutor_id: int, live: list[Session]) -> Refusal | None:
        if not engines.synced.is_set():
            return None  # not listed yet: every tutor would look cold; admit meanwhile
        tutors = (s.tutor_id for s in live)
        return cold_start_refusal(
            tutor_id, engine_states(engines.objects), tutors, limit, retry_after
        )

    return check
