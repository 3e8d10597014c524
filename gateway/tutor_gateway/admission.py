"""Admission of new sessions: pure decisions over plain data (no I/O, no clocks).

Each limit is a setting (README, "Limits and abuse"); a refusal names it. The session store
decides MAX_SESSIONS atomically on its own as well (``CapacityError``); the checks here run
first, under the gateway's admission lock, so that one gateway never admits past a limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tutor_contract.crd import ENGINE_FAILED, ENGINE_PENDING

from .sessions import Session


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the limit's setting, what the client is told, when to retry,
    and the HTTP status (429; MAX_SESSIONS keeps the seed's 503)."""

    limit: str  # the setting's name, e.g. "MAX_SESSIONS_PER_STUDENT"
    detail: str
    retry_after: int  # seconds, for the Retry-After header
    status: int = 429

    @property
    def label(self) -> str:
        """The metric label: the setting's name in lower case."""
        return self.limit.lower()


class LimitExceeded(Exception):
    """A request refused by an admission or rate limit."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.detail)
        self.refusal = refusal


@dataclass(frozen=True)
class SessionLimits:
    """The session-count limits (settings of the same names)."""

    max_sessions: int
    max_sessions_per_student: int
    max_sessions_per_tutor: int
    retry_after: int


def session_refusal(
    live: Iterable[Session], tutor_id: int, student_id: int, limits: SessionLimits
) -> Refusal | None:
    """Whether a new session of ``student_id`` with ``tutor_id`` fits beside the ``live`` ones:
    MAX_SESSIONS first (503, as in the seed), then per student, then per tutor (429)."""
    total = per_student = per_tutor = 0
    for session in live:
        total += 1
        per_student += session.student_id == student_id
        per_tutor += session.tutor_id == tutor_id
    if total >= limits.max_sessions:
        detail = f"Maximum number of sessions reached ({limits.max_sessions})"
        return Refusal("MAX_SESSIONS", detail, limits.retry_after, status=503)
    if per_student >= limits.max_sessions_per_student:
        detail = (
            f"Too many sessions for student {student_id}: {per_student} alive "
            f"(MAX_SESSIONS_PER_STUDENT {limits.max_sessions_per_student}); end one first"
        )
        return Refusal("MAX_SESSIONS_PER_STUDENT", detail, limits.retry_after)
    if per_tutor >= limits.max_sessions_per_tutor:
        detail = (
            f"Too many sessions for tutor {tutor_id}: {per_tutor} alive "
            f"(MAX_SESSIONS_PER_TUTOR {limits.max_sessions_per_tutor})"
        )
        return Refusal("MAX_SESSIONS_PER_TUTOR", detail, limits.retry_after)
    return None


@dataclass(frozen=True)
class EngineState:
    """What admission needs of one tutor's engine (cluster mode: its TutorEngine)."""

    phase: str | None  # status.phase; None: not reported yet
    ready: bool  # at least one ready pod (status.readyEndpoints)


# TutorEngine phases (tutor_contract.crd) under which no new pod is coming.
NOT_STARTING = frozenset({ENGINE_FAILED})
STARTING = frozenset({ENGINE_PENDING})


def starting_tutors(engines: Mapping[int, EngineState], session_tutors: Iterable[int]) -> set[int]:
    """The tutors whose engine is cold-starting: a TutorEngine with no ready pod that is
    Pending (pods are on their way), and a tutor with live sessions but no ready pod (no
    TutorEngine yet, not yet reconciled, or scaled down: the operator is about to start one)
    unless its engine Failed."""
    starting = {t for t, e in engines.items() if not e.ready and e.phase in STARTING}
    for tutor in set(session_tutors):
        engine = engines.get(tutor)
        if engine is None or not (engine.ready or engine.phase in NOT_STARTING):
            starting.add(tutor)
    return starting


def cold_start_refusal(
    tutor_id: int,
    engines: Mapping[int, EngineState],
    session_tutors: Iterable[int],
    limit: int,
    retry_after: int,
) -> Refusal | None:
    """Whether a new session of ``tutor_id`` may cause a cold start (cluster mode): always when
    its engine has a ready pod or is already starting (the session joins that start); else
    only while fewer than ``limit`` tutors are starting (MAX_CONCURRENT_COLD_STARTS)."""
    engine = engines.get(tutor_id)
    if engine is not None and engine.ready:
        return None
    starting = starting_tutors(engines, session_tutors)
    if tutor_id in starting or len(starting) < limit:
        return None
    detail = (
        f"Too many tutor engines starting: {len(starting)} under way "
        f"(MAX_CONCURRENT_COLD_STARTS {limit}); tutor {tutor_id} has no engine running yet"
    )
    return Refusal("MAX_CONCURRENT_COLD_STARTS", detail, retry_after)
