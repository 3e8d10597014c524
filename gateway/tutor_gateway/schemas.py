"""Request and response bodies of the REST API, exactly as the seed documents them."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from .sessions import Session


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
        None, min_length=1, max_length=253, description="Optional knowledge-base id."
    )


class CreateSessionResponse(BaseModel):
    """Where and how the browser connects."""

    session_id: str
    engine_url: str
    engine_token: str
    status: str


class SessionInfo(BaseModel):
    """A session's public state (never its token)."""

    session_id: str
    tutor_id: int
    student_id: int
    kb_id: str | None
    status: str
    created_at: str
    last_activity: str

    @classmethod
    def of(cls, session: Session) -> SessionInfo:
        return cls(
            session_id=session.session_id,
            tutor_id=session.tutor_id,
            student_id=session.student_id,
            kb_id=session.kb_id,
            status=session.status,
            created_at=iso(session.created_at),
            last_activity=iso(session.last_activity),
        )


class SessionList(BaseModel):
    """``GET /v1/sessions`` (for debugging): every live session."""

    total: int
    sessions: list[SessionInfo]


class Health(BaseModel):
    """``GET /health``."""

    status: str
    service: str
    active_sessions: int
    max_sessions: int
