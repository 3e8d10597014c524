"""Request and response bodies of the REST API, exactly as the seed documents them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import JsonDict
from pydantic_core import PydanticCustomError
from tutor_contract.crd import LOADING, PENDING
from tutor_contract.knowledge import KB_ID_RULE, is_valid_kb_id

from .sessions import Session

if TYPE_CHECKING:
    from .startup import EngineState  # which needs ``iso`` from here

# The rule of tutor_contract.knowledge as a JSON-schema (ECMA) pattern, for the OpenAPI page.
_KB_ID_SCHEMA_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


def iso(epoch: float) -> str:
    """Seed-style timestamp (``2024-12-22T12:00:00``, UTC) of an epoch time."""
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None).isoformat(timespec="seconds")


class CreateSessionRequest(BaseModel):
    """``POST /v1/sessions``: who talks to which tutor, with which knowledge base."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"tutor_id": 1, "student_id": 1, "kb_id": "test-kb"}]}
    )

    tutor_id: int = Field(ge=0, le=2**31 - 1, description="The tutor (each has its own engine).")
    student_id: int = Field(ge=0, le=2**63 - 1, description="The student.")
    kb_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description=f"Optional knowledge-base id: {KB_ID_RULE}.",
        json_schema_extra={"pattern": _KB_ID_SCHEMA_PATTERN},
    )

    @field_validator("kb_id")
    @classmethod
    def _kb_id_rule(cls, kb_id: str | None) -> str | None:
        """The engine's rule, as a whole (full match: no trailing newline, no '..')."""
        if kb_id is not None and not is_valid_kb_id(kb_id):
            raise PydanticCustomError("kb_id", "kb_id must be {rule}", {"rule": KB_ID_RULE})
        return kb_id


CREATE_SESSION_EXAMPLE: JsonDict = {
    "session_id": "550e8400-e29b-41d4-a716-446655440000",
    "engine_url": "ws://localhost:9000/ws/ws/550e8400-e29b-41d4-a716-446655440000",
    "engine_token": "kq3Xv8mN2pL5rT9wY4zB6cD1fG7hJ0sA5eR8tU2iO4w",
    "status": "active",
}


class CreateSessionResponse(BaseModel):
    """Where and how the browser connects."""

    model_config = ConfigDict(json_schema_extra={"examples": [CREATE_SESSION_EXAMPLE]})

    session_id: str
    engine_url: str
    engine_token: str
    status: str


ENGINE_EXAMPLE: JsonDict = {
    "phase": PENDING,
    "reason": LOADING,
    "message": "pod tutor-1-7d9c5b-x2x4k: engine is loading its models",
    "since": "2024-12-22T12:00:03Z",
}


class EngineInfo(BaseModel):
    """The session's engine: a cold start under way, ready, or why not (not in the seed)."""

    model_config = ConfigDict(json_schema_extra={"examples": [ENGINE_EXAMPLE]})

    phase: str = Field(
        description="Pending (no engine serves the session yet), Active (one does) or Failed "
        "(its engine's spec is invalid): the TutorSession phases, in both modes."
    )
    reason: str = Field(
        description="Why: the operator's Ready-condition reason (ScalingUp, Scheduling, "
        "Pulling, ImagePullBackOff, Loading, ModelLoadFailed, Crashing, AtCapacity, Assigned, "
        "...) or, locally, NotStarted, Starting, Loading, ModelLoadFailed, Crashing, Ready."
    )
    message: str = Field(description="The reason in words (a pod's state, the engine's error).")
    since: str | None = Field(
        description="RFC 3339 (UTC): when the engine entered this phase (in a cluster, the "
        "Ready condition's lastTransitionTime); null if not known."
    )


SESSION_EXAMPLE: JsonDict = {
    "session_id": "550e8400-e29b-41d4-a716-446655440000",
    "tutor_id": 1,
    "student_id": 1,
    "kb_id": "test-kb",  # not None: the OpenAPI document drops null values, examples' too
    "status": "active",
    "created_at": "2024-12-22T12:00:00",
    "last_activity": "2024-12-22T12:05:00",
    "engine": ENGINE_EXAMPLE,
}


class SessionInfo(BaseModel):
    """A session's public state (never its token)."""

    model_config = ConfigDict(json_schema_extra={"examples": [SESSION_EXAMPLE]})

    session_id: str
    tutor_id: int
    student_id: int
    kb_id: str | None
    status: str
    created_at: str
    last_activity: str
    engine: EngineInfo | None = Field(
        None, description="Its engine's state (an addition: the seed's fields are unchanged)."
    )

    @classmethod
    def of(cls, session: Session, engine: EngineState | None = None) -> SessionInfo:
        return cls(
            session_id=session.session_id,
            tutor_id=session.tutor_id,
            student_id=session.student_id,
            kb_id=session.kb_id,
            status=session.status,
            created_at=iso(session.created_at),
            last_activity=iso(session.last_activity),
            engine=None if engine is None else EngineInfo(**engine.as_json()),
        )


SESSION_LIST_EXAMPLE: JsonDict = {"total": 1, "sessions": [SESSION_EXAMPLE]}


class SessionList(BaseModel):
    """``GET /v1/sessions`` (for debugging): every live session."""

    model_config = ConfigDict(json_schema_extra={"examples": [SESSION_LIST_EXAMPLE]})

    total: int
    sessions: list[SessionInfo]


HEALTH_EXAMPLE: JsonDict = {
    "status": "healthy",
    "service": "GPU Server Management API",
    "active_sessions": 0,
    "max_sessions": 10,
}


class Health(BaseModel):
    """``GET /health``."""

    model_config = ConfigDict(json_schema_extra={"examples": [HEALTH_EXAMPLE]})

    status: str
    service: str
    active_sessions: int
    max_sessions: int
