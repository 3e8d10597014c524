"""Kubernetes-style status conditions as pure functions; the reasons come from the contract."""

from __future__ import annotations

from typing import Any

from tutor_contract.crd import (
    API_ERROR,
    ASSIGNED,
    AT_CAPACITY,
    CRASHING,
    ERR_IMAGE_PULL,
    IMAGE_PULL_BACKOFF,
    INVALID_SPEC,
    LOADING,
    MODEL_LOAD_FAILED,
    PULLING,
    READY,
    RECONCILED,
    REPLICAS_READY,
    SCALED_DOWN,
    SCALING_UP,
    SCHEDULING,
    STARTING,
    SUCCEEDED,
)
from tutor_contract.crd import ENGINE_FAILED_REASON as ENGINE_FAILED
from tutor_contract.crd import EXPIRED_REASON as EXPIRED

__all__ = [
    "API_ERROR",
    "ASSIGNED",
    "AT_CAPACITY",
    "CRASHING",
    "ENGINE_FAILED",
    "ERR_IMAGE_PULL",
    "EXPIRED",
    "IMAGE_PULL_BACKOFF",
    "INVALID_SPEC",
    "LOADING",
    "MODEL_LOAD_FAILED",
    "PULLING",
    "READY",
    "RECONCILED",
    "REPLICAS_READY",
    "SCALED_DOWN",
    "SCALING_UP",
    "SCHEDULING",
    "STARTING",
    "SUCCEEDED",
    "condition",
    "set_condition",
]


def condition(
    type_: str, status: bool, reason: str, message: str = "", generation: int | None = None
) -> dict[str, Any]:
    """A condition without its transition time (``set_condition`` adds it)."""
    cond: dict[str, Any] = {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def set_condition(
    conditions: list[dict[str, Any]] | None, new: dict[str, Any], now: str
) -> tuple[list[dict[str, Any]], bool]:
    """Return ``conditions`` with ``new`` in place of its type, and whether anything changed.

    ``lastTransitionTime`` moves to ``now`` only when the status flips (or the type is new).
    """
    conditions = list(conditions or [])
    for index, old in enumerate(conditions):
        if old.get("type") != new["type"]:
            continue
        flipped = old.get("status") != new["status"]
        merged = {**new, "lastTransitionTime": now if flipped else old.get("lastTransitionTime")}
        if merged["lastTransitionTime"] is None:
            merged["lastTransitionTime"] = now
        if merged == old:
            return conditions, False
        conditions[index] = merged
        return conditions, True
    return [*conditions, {**new, "lastTransitionTime": now}], True
