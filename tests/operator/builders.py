"""Fixed inputs for the builder tests, and the golden manifests built from them.

    make golden   # python -m tests.operator.builders: rewrite tests/operator/golden/*.yaml

Regenerate only after a deliberate change to what the operator builds, and review the diff.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import yaml
from tutor_operator import objects
from tutor_operator.settings import EngineDefaults, OperatorSettings

GOLDEN = pathlib.Path(__file__).parent / "golden"
GOLDEN_HEADER = "# Generated from tutor_operator.objects by `make golden`, then reviewed.\n"


def settings(**overrides: Any) -> OperatorSettings:
    """Operator settings independent of the environment and any ``.env``."""
    return OperatorSettings(_env_file=None, **overrides)  # type: ignore[call-arg]


def defaults(**overrides: Any) -> EngineDefaults:
    """Engine defaults with ``overrides`` (the chart's keys, nested parts as dicts)."""
    return EngineDefaults.model_validate(overrides)


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


def default_body() -> dict[str, Any]:
    """The stored body of the engine the operator creates by default for tutor 7."""
    default = objects.build_default_engine(7, "tutors", defaults())
    return engine(default["spec"], default["metadata"]["labels"])


GOLDEN_BUILDS: dict[str, Callable[[], dict[str, Any]]] = {
    "default-engine.yaml": lambda: objects.build_default_engine(7, "tutors", defaults()),
    "default-deployment.yaml": lambda: objects.build_engine_deployment(
        objects.resolve(default_body(), defaults()), replicas=1
    ),
    "default-service.yaml": lambda: objects.build_engine_service(
        objects.resolve(default_body(), defaults())
    ),
    "default-pdb.yaml": lambda: objects.build_engine_pdb(
        objects.resolve(default_body(), defaults())
    ),
    "admin-deployment.yaml": lambda: objects.build_engine_deployment(
        objects.resolve(engine(ADMIN_SPEC), defaults()), replicas=2
    ),
    "shared-gpu-deployment.yaml": lambda: objects.build_engine_deployment(
        objects.resolve(engine(SHARED_GPU_SPEC), defaults()), replicas=1
    ),
}


def golden(name: str) -> dict[str, Any]:
    """The stored golden manifest ``name``."""
    loaded: dict[str, Any] = yaml.safe_load((GOLDEN / name).read_text())
    return loaded


def write_golden() -> None:
    """Rewrite every golden manifest from the current builders."""
    for name, build in GOLDEN_BUILDS.items():
        body = yaml.safe_dump(build(), sort_keys=False, width=1000)
        (GOLDEN / name).write_text(GOLDEN_HEADER + body)
        print(f"wrote {GOLDEN / name}")


if __name__ == "__main__":
    write_golden()
