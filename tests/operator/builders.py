"""Fixed inputs for the builder tests (shared with the golden-file generator below)."""

from __future__ import annotations

from typing import Any

from tutor_operator.settings import OperatorSettings


def settings(**overrides: Any) -> OperatorSettings:
    """Operator settings independent of the environment and any ``.env``."""
    return OperatorSettings(_env_file=None, **overrides)  # type: ignore[call-arg]


def engine(spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A stored TutorEngine body (with a fixed uid) for ``spec``."""
    return {
        "apiVersion": "tutor.vts.dev/v1alpha1",
        "kind": "TutorEngine",
        "metadata": {
            "name": f"tutor-{spec['tutorId']}",
            "namespace": "tutors",
            "uid": "00000000-0000-0000-0000-000000000007",
            "labels": labels or {},
        },
        "spec": spec,
    }


ADMIN_SPEC = {
    "tutorId": 42,
    "image": "registry.example/tutor-engine:math",
    "maxReplicas": 3,
    "resources": {"gpuCount": 2, "memory": "40Gi"},
    "nodeSelector": {"gpu.example/model": "a100"},
    "models": {
        "llm": {
            "backend": "openai",
            "model": "qwen2.5-14b-instruct",
            "server": {
                "model": "Qwen/Qwen2.5-14B-Instruct",
                "maxModelLen": 8192,
                "args": ["--enable-prefix-caching"],
                "cacheClaim": "model-cache",
            },
        },
        "tts": {"backend": "coqui", "model": "xtts_v2"},
    },
    "env": [{"name": "ENGINE_SYSTEM_PROMPT", "value": "You teach algebra."}],
    # Identity and placement of the pods: a private registry, a priority, one pod per node
    # when possible, spread over zones (the operator fills in the engine's own selector).
    "imagePullSecrets": [{"name": "registry-example"}],
    "serviceAccountName": "tutor-engine",
    "priorityClassName": "tutor-gpu",
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"tutor.vts.dev/engine": "tutor-42"}},
                    },
                }
            ]
        }
    },
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
        }
    ],
}

# One GPU shared by the engine and its vLLM sidecar through a DRA ResourceClaimTemplate.
SHARED_GPU_SPEC = {
    "tutorId": 43,
    "resources": {"gpuClaimTemplate": "single-gpu"},
    "models": {"tts": {"backend": "coqui", "model": "xtts_v2"}},
}
