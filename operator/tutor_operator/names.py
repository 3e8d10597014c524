"""Names, labels and times shared by the operator, the gateway's cluster mode and the tests."""

from __future__ import annotations

import datetime as dt

from . import GROUP

ENGINE_PLURAL = "tutorengines"
SESSION_PLURAL = "tutorsessions"
ENGINE_KIND = "TutorEngine"
SESSION_KIND = "TutorSession"

LABEL_APP = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_TUTOR_ID = f"{GROUP}/tutor-id"
LABEL_ENGINE = f"{GROUP}/engine"
LABEL_ORIGIN = f"{GROUP}/origin"

ENGINE_APP = "tutor-engine"
MANAGER = "tutor-operator"
ORIGIN_DEFAULTS = "operator-defaults"  # on TutorEngines the operator created from its defaults
FINALIZER = f"{GROUP}/finalizer"
CONTAINER = "engine"
PORT_NAME = "http"
LLM_CONTAINER = "vllm"  # the sidecar serving the LLM on the pod's loopback
LLM_PORT_NAME = "vllm"


def engine_name(tutor_id: int) -> str:
    """The one TutorEngine (and Deployment, Service) name of a tutor: ``tutor-<id>``."""
    if isinstance(tutor_id, bool) or not isinstance(tutor_id, int) or tutor_id < 0:
        raise ValueError(f"tutor id must be a non-negative integer, not {tutor_id!r}")
    return f"tutor-{tutor_id}"


def selector_labels(engine: str) -> dict[str, str]:
    """Labels that select an engine's pods (immutable once the Deployment exists)."""
    return {LABEL_APP: ENGINE_APP, LABEL_ENGINE: engine}


def engine_labels(engine: str, tutor_id: int) -> dict[str, str]:
    """Labels on an engine's Deployment, Service and pods."""
    return {
        **selector_labels(engine),
        LABEL_INSTANCE: engine,
        LABEL_MANAGED_BY: MANAGER,
        LABEL_TUTOR_ID: str(tutor_id),
    }


def format_time(moment: dt.datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes times."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> dt.datetime | None:
    """Parse an RFC 3339 time (``Z`` or offset, optional fraction); ``None`` if absent or bad."""
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
