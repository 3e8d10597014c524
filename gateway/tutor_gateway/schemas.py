"""Request and response bodies of the REST API, exactly as the seed documents them."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError
from tutor_contract.knowledge import KB_ID_RULE, is_valid_kb_id

from .sessions import Session

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
