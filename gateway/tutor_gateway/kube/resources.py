"""TutorSession and TutorEngine resources as the gateway sees them: building, reading (pure
functions)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from lightkube.generic_resource import create_namespaced_resource
from tutor_contract.crd import (
    ACTIVE,
    ENGINE_KIND,
    ENGINE_PLURAL,
    GATEWAY_MANAGER,
    GROUP,
    LABEL_MANAGED_BY,
    LABEL_TUTOR_ID,
    PENDING,
    READY,
    READY_ENDPOINTS,
    SESSION_KIND,
    SESSION_PLURAL,
    VERSION,
    parse_time,
)

from ..sessions import Session

TutorSession = create_namespaced_resource(GROUP, VERSION, SESSION_KIND, SESSION_PLURAL)
TutorEngine = create_namespaced_resource(GROUP, VERSION, ENGINE_KIND, ENGINE_PLURAL)

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
                LABEL_MANAGED_BY: GATEWAY_MANAGER,
            },
        },
        "spec": spec,
    }


def _epoch(text: str | None, default: float) -> float:
    moment = parse_time(text)
    return moment.timestamp() if moment else default


def seed_status(phase: str | None) -> str:
    """The seed's ``status`` for a phase: a live session (waiting or routed) is ``active``."""
    return "active" if phase in (None, PENDING, ACTIVE) else phase.lower()


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
    return status.get("endpoint") if status.get("phase") == ACTIVE else None


def not_routable_reason(obj: Obj) -> str:
    """Why a session is not routable yet, from its Ready condition (for error messages)."""
    status = obj.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == READY:
            return f"{condition.get('reason', PENDING)}: {condition.get('message', '')}".strip(": ")
    return status.get("phase") or PENDING


def activity_patch(moment: float) -> Obj:
    """Status merge patch recording client activity at ``moment`` (epoch seconds).

    With microseconds (RFC 3339, as Kubernetes' MicroTime): whole seconds would make a session
    look up to a second idler than it is, a third of a short timeout.
    """
    stamp = dt.datetime.fromtimestamp(moment, dt.UTC).isoformat(timespec="microseconds")
    return {"status": {"lastActivity": stamp.replace("+00:00", "Z")}}


def engine_name(tutor_id: int) -> str:
    """The name of a tutor's TutorEngine: ``tutor-<id>`` (the CRD's validation rule)."""
    return f"tutor-{tutor_id}"


def ready_endpoints(engine: Obj | None) -> list[str]:
    """The base URLs of a TutorEngine's ready pods (``status.readyEndpoints``)."""
    listed = ((engine or {}).get("status") or {}).get(READY_ENDPOINTS) or []
    return [url for url in listed if isinstance(url, str) and url]
