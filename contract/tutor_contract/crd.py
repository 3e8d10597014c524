"""The custom resources as the gateway and the operator both read and write them.

API group, kinds and plurals; the phases and ``Ready`` condition reasons the operator writes
and the gateway reads; the labels both put on TutorSessions; the header the gateway sends
engines; the one timestamp format of ``status``. Each literal is spelled here once.
"""

from __future__ import annotations

import datetime as dt

GROUP = "tutor.vts.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

SESSION_KIND = "TutorSession"
SESSION_PLURAL = "tutorsessions"
ENGINE_KIND = "TutorEngine"
ENGINE_PLURAL = "tutorengines"

# TutorSession status.phase (crds/tutorsessions.yaml has the same enum).
PENDING = "Pending"  # waiting for an engine pod; the Ready condition says why
ACTIVE = "Active"  # pinned to a ready pod: status.endpoint is routable
EXPIRED = "Expired"  # idle past its timeout; the operator deletes it next
FAILED = "Failed"  # its engine's spec is invalid
SESSION_PHASES = (PENDING, ACTIVE, EXPIRED, FAILED)

# TutorEngine status.phase (crds/tutorengines.yaml has the same enum).
ENGINE_PENDING = PENDING  # no ready pod yet
ENGINE_READY = "Ready"  # ready pods, sessions
ENGINE_IDLE = "Idle"  # ready pods, no sessions: the idle clock runs
ENGINE_SCALED_DOWN = "ScaledDown"
ENGINE_FAILED = FAILED  # an invalid spec, or its best pod crash-looping
ENGINE_PHASES = (ENGINE_PENDING, ENGINE_READY, ENGINE_IDLE, ENGINE_SCALED_DOWN, ENGINE_FAILED)
# TutorEngine status field: sorted base URLs (as a session's status.endpoint) of its ready pods
# that are not being deleted; any of them can serve any of the tutor's sessions.
READY_ENDPOINTS = "readyEndpoints"

# Condition types.
READY = ENGINE_READY
RECONCILED = "Reconciled"

# Condition reasons (CamelCase, as Kubernetes has them). Sessions: why not Active yet, or gone.
ASSIGNED = "Assigned"
SCALING_UP = "ScalingUp"
STARTING = "Starting"
SCHEDULING = "Scheduling"
PULLING = "Pulling"
IMAGE_PULL_BACKOFF = "ImagePullBackOff"  # the kubelet's own reasons, passed through
ERR_IMAGE_PULL = "ErrImagePull"
LOADING = "Loading"
CRASHING = "Crashing"
MODEL_LOAD_FAILED = "ModelLoadFailed"
AT_CAPACITY = "AtCapacity"
ENGINE_FAILED_REASON = "EngineFailed"
EXPIRED_REASON = EXPIRED
# Engines.
REPLICAS_READY = "ReplicasReady"
SCALED_DOWN = ENGINE_SCALED_DOWN
SUCCEEDED = "Succeeded"
API_ERROR = "ApiError"
INVALID_SPEC = "InvalidSpec"

REASONS = (
    ASSIGNED,
    SCALING_UP,
    STARTING,
    SCHEDULING,
    PULLING,
    IMAGE_PULL_BACKOFF,
    ERR_IMAGE_PULL,
    LOADING,
    CRASHING,
    MODEL_LOAD_FAILED,
    AT_CAPACITY,
    ENGINE_FAILED_REASON,
    EXPIRED_REASON,
    REPLICAS_READY,
    SCALED_DOWN,
    SUCCEEDED,
    API_ERROR,
    INVALID_SPEC,
)

# Labels.
LABEL_APP = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_TUTOR_ID = f"{GROUP}/tutor-id"  # on TutorSessions (both write it) and engine children
LABEL_ENGINE = f"{GROUP}/engine"
LABEL_ORIGIN = f"{GROUP}/origin"
ORIGIN_DEFAULTS = "operator-defaults"  # on TutorEngines the operator created from its defaults
OPERATOR_MANAGER = "tutor-operator"  # LABEL_MANAGED_BY of the operator's children
GATEWAY_MANAGER = "tutor-gateway"  # LABEL_MANAGED_BY of the gateway's TutorSessions

LABEL_KEYS = (
    LABEL_APP,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_TUTOR_ID,
    LABEL_ENGINE,
    LABEL_ORIGIN,
)

# The shared secret the gateway presents to engines (ENGINE_API_KEY).
ENGINE_KEY_HEADER = "X-Engine-Key"


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
