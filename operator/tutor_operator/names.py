"""Names, labels and times shared by the operator, the gateway's cluster mode and the tests."""

from __future__ import annotations

from tutor_contract.crd import (
    ENGINE_KIND,
    ENGINE_PLURAL,
    GROUP,
    LABEL_APP,
    LABEL_ENGINE,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_ORIGIN,
    LABEL_TUTOR_ID,
    ORIGIN_DEFAULTS,
    SESSION_KIND,
    SESSION_PLURAL,
    format_time,
    parse_time,
)
from tutor_contract.crd import OPERATOR_MANAGER as MANAGER

__all__ = [
    "ENGINE_KIND",
    "ENGINE_PLURAL",
    "LABEL_APP",
    "LABEL_ENGINE",
    "LABEL_INSTANCE",
    "LABEL_MANAGED_BY",
    "LABEL_ORIGIN",
    "LABEL_TUTOR_ID",
    "MANAGER",
    "ORIGIN_DEFAULTS",
    "SESSION_KIND",
    "SESSION_PLURAL",
    "format_time",
    "parse_time",
]

ENGINE_APP = "tutor-engine"
FINALIZER = f"{GROUP}/finalizer"
CONTAINER = "engine"
PORT_NAME = "http"
LLM_CONTAINER = "vllm"  # the sidecar serving the LLM on the pod's loopback

# On engine pods: what the operator marks while they hold sessions (see operator/README.md).
LABEL_BUSY = f"{GROUP}/busy"  # "true" while the pod holds sessions; the engine's PDB selects it
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"  # its session count
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"  # "false" while busy
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"  # "true" while busy
# On engine Deployments: what their pod template was built from.
SPEC_HASH = f"{GROUP}/spec-hash"  # of the engine's effective spec
TEMPLATE_HASH = f"{GROUP}/template-hash"  # of the pod template this operator version builds


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
