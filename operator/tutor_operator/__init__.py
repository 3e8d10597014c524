"""Kubernetes operator for tutor-serving: TutorSession and TutorEngine reconciliation (kopf)."""

from tutor_contract.crd import API_VERSION, GROUP, VERSION

__all__ = ["API_VERSION", "GROUP", "VERSION"]
