"""Manifest builders against golden YAML, plus defaults, names and spec checks."""

from __future__ import annotations

import pathlib

import pytest
import yaml
from tutor_operator import names, objects

from .builders import ADMIN_SPEC, engine, settings

GOLDEN = pathlib.Path(__file__).parent / "golden"


def golden(name: str) -> dict:
    return yaml.safe_load((GOLDEN / name).read_text())


def default_body() -> dict:
    default = objects.build_default_engine(7, "tutors", settings())
    return engine(default["spec"], default["metadata"]["labels"])


def test_default_engine_matches_golden() -> None:
    assert objects.build_default_engine(7, "tutors", settings()) == golden("default-engine.yaml")


def test_default_deployment_matches_golden() -> None:
    built = objects.build_engine_deployment(default_body(), settings(), replicas=1)
    assert built == golden("default-deployment.yaml")


def test_default_service_matches_golden() -> None:
    assert objects.build_engine_service(default_body(), settings()) == golden(
        "default-service.yaml"
    )


def test_admin_engine_keeps_its_models_resources_and_env() -> None:
    built = objects.build_engine_deployment(engine(ADMIN_SPEC), settings(), replicas=2)
    assert built == golden("admin-deployment.yaml")
    container = built["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ENGINE_LLM_MODEL"] == "qwen2.5-14b-instruct"
    assert env["ENGINE_TTS_BACKEND"] == "coqui"
    assert env["ENGINE_ASR_BACKEND"] == "faster-whisper"  # omitted: the operator's default
    assert env["ENGINE_SYSTEM_PROMPT"] == "You teach algebra."
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_settings_shape_every_default_engine() -> None:
    custom = settings(
        engine_image="img:1",
        gpu_count=0,
        node_selector={"pool": "cpu"},
        tolerations=[],
        api_key_secret="",
        llm_backend="mock",
        llm_model="",
    )
    built = objects.build_engine_deployment(
        engine(objects.default_engine_spec(3, custom)), custom, 0
    )
    pod = built["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "img:1"
    assert pod["nodeSelector"] == {"pool": "cpu"} and pod["tolerations"] == []
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "ENGINE_API_KEY" not in env and "ENGINE_LLM_MODEL" not in env
    assert env["ENGINE_LLM_BACKEND"] == "mock"


def test_extra_env_overrides_by_name_and_template_patch_carries_it() -> None:
    spec = {"tutorId": 1, "env": [{"name": "ENGINE_PORT", "value": "9000"}]}
    built = objects.build_engine_deployment(engine(spec), settings(), 1)
    env = built["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == "ENGINE_PORT"] == ["9000"]
    patch = objects.deployment_template_patch(built)
    assert patch["spec"]["template"] == built["spec"]["template"]
    assert "replicas" not in patch["spec"]


def test_scaling_comes_from_spec_or_defaults_and_only_defaults_are_deletable() -> None:
    deleting = settings(idle_policy="Delete")
    default = objects.build_default_engine(7, "tutors", deleting)
    ours = objects.engine_scaling(default, deleting)
    assert ours.deletable and ours.idle_policy == "Delete"
    admin = objects.engine_scaling(
        engine({"tutorId": 42, "maxSessionsPerReplica": 2, "idlePolicy": "Delete"}), settings()
    )
    assert not admin.deletable
    assert (admin.per_replica, admin.max_replicas, admin.min_replicas) == (2, 1, 0)


@pytest.mark.parametrize(
    ("name", "spec", "problem"),
    [
        ("tutor-5", {"tutorId": 5}, None),
        ("tutor-5", {"tutorId": 6}, "must be named tutor-6"),
        ("tutor-5", {"tutorId": -5}, "non-negative"),
        ("tutor-5", {"tutorId": "5"}, "non-negative"),
        ("tutor-5", {"tutorId": 5, "minReplicas": 2, "maxReplicas": 1}, "must not exceed"),
    ],
)
def test_spec_error(name: str, spec: dict, problem: str | None) -> None:
    error = objects.spec_error({"metadata": {"name": name}, "spec": spec})
    assert (error is None) if problem is None else (problem in error)


@pytest.mark.parametrize(
    ("tutor_id", "expected"), [(0, "tutor-0"), (7, "tutor-7"), (123456789, "tutor-123456789")]
)
def test_engine_name(tutor_id: int, expected: str) -> None:
    assert names.engine_name(tutor_id) == expected


@pytest.mark.parametrize("bad", [-1, "7", 1.5, True, None])
def test_engine_name_rejects_non_ids(bad: object) -> None:
    with pytest.raises(ValueError):
        names.engine_name(bad)  # type: ignore[arg-type]
