"""Kubernetes operator for tutor-serving: TutorSession and TutorEngine reconciliation (kopf)."""

GROUP = "tutor.vts.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
