"""TutorSession resources as the gateway sees them: building, reading (pure functions)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from lightkube.generic_resource import create_namespaced_resource
from tutor_operator import GROUP, VERSION
from tutor_operator.names import (
    LABEL_TUTOR_ID,
    SESSION_KIND,
    SESSION_PLURAL,
    format_time,
    parse_time,
)

from ..sessions import Session

TutorSession = create_namespaced_resource(GROUP, VERSION, SESSION_KIND, SESSION_PLURAL)

Obj = dict[str, Any]


def build_session(
    session_id: str,
    tutor_id: int,
    student_id: int,
    kb_id: str | None,
    token_hash: str,
    timeout_seconds: float,
) -> Obj:
    """The TutorSession the gateway creates for a new session (the hash, never the token)."""
    spec: Obj = {
        "tutorId": tutor_id,
        "studentId": student_id,
        "tokenHash": token_hash,
        "timeoutSeconds": max(1, round(timeout_seconds)),
    }
    if kb_id is not None:
        spec["kbId"] = kb_id
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": SESSION_KIND,
        "metadata": {
            "name": session_id,
            "labels": {
                LABEL_TUTOR_ID: str(tutor_id),
                "app.kubernetes.io/managed-by": "tutor-gateway",
            },
        },
        "spec": spec,
    }


def _epoch(text: str | None, default: float) -> float:
    moment = parse_time(text)
    return moment.timestamp() if moment else default


def seed_status(phase: str | None) -> str:
    """The seed's ``status`` for a phase: a live session (waiting or routed) is ``active``."""
    return "active" if phase in (None, "Pending", "Active") else phase.lower()


def session_of(obj: Obj, now: float) -> Session:
    """The gateway's Session for a TutorSession."""
    meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status") or {}
    created = _epoch(meta.get("creationTimestamp"), now)
    return Session(
        session_id=meta["name"],
        tutor_id=int(spec["tutorId"]),
        student_id=int(spec["studentId"]),
        kb_id=spec.get("kbId"),
        token_hash=spec["tokenHash"],
        status=seed_status(status.get("phase")),
        created_at=created,
        last_activity=_epoch(status.get("lastActivity"), created),
    )


def endpoint_of(obj: Obj) -> str | None:
    """The engine base URL of an Active session, or None while it is not routable."""
    status = obj.get("status") or {}
    return status.get("endpoint") if status.get("phase") == "Active" else None


def waiting_reason(obj: Obj) -> str:
    """Why a session is not routable yet, from its Ready condition (for error messages)."""
    status = obj.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return f"{condition.get('reason', 'Pending')}: {condition.get('message', '')}".strip(
                ": "
            )
    return status.get("phase") or "Pending"


def activity_patch(moment: float) -> Obj:
    """Status merge patch recording client activity at ``moment`` (epoch seconds)."""
    return {"status": {"lastActivity": format_time(dt.datetime.fromtimestamp(moment, dt.UTC))}}
