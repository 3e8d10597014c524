"""Manifest builders against golden YAML, plus defaults, names and spec checks."""

from __future__ import annotations

import pytest
from tutor_operator import __main__ as operator_main
from tutor_operator import names, objects
from tutor_operator.settings import unknown_variables

from .builders import (
    ADMIN_SPEC,
    GOLDEN,
    GOLDEN_BUILDS,
    SHARED_GPU_SPEC,
    default_body,
    defaults,
    engine,
    golden,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", sorted(GOLDEN_BUILDS))
def test_built_manifest_matches_golden(name: str) -> None:
    assert GOLDEN_BUILDS[name]() == golden(name)


def test_every_golden_file_has_a_builder() -> None:
    assert sorted(p.name for p in GOLDEN.glob("*.yaml")) == sorted(GOLDEN_BUILDS)


def test_default_pdb_keeps_only_busy_pods_and_lets_unhealthy_ones_go() -> None:
    pdb = objects.build_engine_pdb(objects.resolve(default_body(), defaults()))
    assert pdb["spec"]["selector"]["matchLabels"][names.LABEL_BUSY] == "true"
    assert pdb["spec"]["maxUnavailable"] == 0


def test_vllm_listens_on_loopback_and_is_probed_from_inside() -> None:
    vllm = containers(
        objects.build_engine_deployment(objects.resolve(default_body(), defaults()), 1)
    )["vllm"]
    assert "--host=127.0.0.1" in vllm["args"] and "ports" not in vllm
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = vllm[probe]["exec"]["command"]
        assert command[:2] == ["python3", "-c"] and "http://127.0.0.1:8001/health" in command[2]


def test_the_spec_hash_ignores_new_empty_fields_and_follows_real_changes() -> None:
    spec = objects.effective_spec({"tutorId": 7}, defaults())
    digest = objects.spec_hash(spec)
    # A newer operator adds fields with empty defaults: the same engine keeps its digest.
    assert objects.spec_hash({**spec, "newField": [], "other": {"nested": ""}}) == digest
    assert objects.spec_hash({**spec, "nodeSelector": {"pool": "a100"}}) != digest
    built = objects.build_engine_deployment(objects.resolve(default_body(), defaults()), 1)
    annotations = built["metadata"]["annotations"]
    assert annotations[names.SPEC_HASH] == objects.spec_hash(
        objects.effective_spec(default_body()["spec"], defaults())
    )
    assert annotations[names.TEMPLATE_HASH] == objects.template_hash(built["spec"]["template"])
    assert not any("version" in k for k in built["spec"]["template"]["metadata"]["annotations"])


def containers(built: dict) -> dict[str, dict]:
    return {c["name"]: c for c in built["spec"]["template"]["spec"]["containers"]}


def env_of(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_admin_engine_keeps_its_models_resources_and_env() -> None:
    built = objects.build_engine_deployment(
        objects.resolve(engine(ADMIN_SPEC), defaults()), replicas=2
    )
    engine_c, vllm = containers(built)["engine"], containers(built)["vllm"]
    env = env_of(engine_c)
    assert env["ENGINE_LLM_MODEL"] == "qwen2.5-14b-instruct"
    assert env["ENGINE_LLM_BASE_URL"] == "http://127.0.0.1:8001/v1"
    assert env["ENGINE_TTS_BACKEND"] == "coqui"
    assert env["ENGINE_ASR_BACKEND"] == "faster-whisper"  # omitted: the operator's default
    assert env["ENGINE_SYSTEM_PROMPT"] == "You teach algebra."
    # Device plugin: the sidecar holds both GPUs (tensor parallel); the engine has none.
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in engine_c["resources"]["limits"]
    assert (env["ENGINE_ASR_DEVICE"], env["ENGINE_TTS_DEVICE"]) == ("cpu", "cpu")
    assert vllm["args"][-4:] == [
        "--tensor-parallel-size=2",
        "--served-model-name=qwen2.5-14b-instruct",
        "--max-model-len=8192",
        "--enable-prefix-caching",
    ]
    volumes = {v["name"]: v for v in built["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "model-cache"}


def test_a_dra_claim_gives_both_containers_the_same_gpu() -> None:
    built = objects.build_engine_deployment(
        objects.resolve(engine(SHARED_GPU_SPEC), defaults()), replicas=1
    )
    pod = built["spec"]["template"]["spec"]
    assert pod["resourceClaims"] == [{"name": "gpu", "resourceClaimTemplateName": "single-gpu"}]
    for container in pod["containers"]:
        assert container["resources"]["claims"] == [{"name": "gpu"}]
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
    env = env_of(containers(built)["engine"])
    assert "ENGINE_ASR_DEVICE" not in env  # the speech models see the GPU
    assert "--gpu-memory-utilization=0.70" in containers(built)["vllm"]["args"]  # XTTS beside


@pytest.mark.parametrize(
    ("models", "resources", "overrides", "holder", "utilization"),
    [
        ({}, {}, {}, "vllm", "0.90"),  # the defaults: vLLM alone on the device-plugin GPU
        ({}, {"gpuClaimTemplate": "g"}, {}, None, "0.80"),  # shared through DRA
        ({"tts": {"backend": "coqui"}}, {"gpuClaimTemplate": "g"}, {}, None, "0.70"),
        ({"llm": {"server": {"gpuMemoryUtilization": 0.5}}}, {}, {}, "vllm", "0.50"),
        ({}, {}, {"vllm": {"gpuMemoryUtilization": 0.6}}, "vllm", "0.60"),
        ({"llm": {"baseUrl": "http://llm:8000/v1"}}, {}, {}, "engine", None),  # external
        ({"llm": {"backend": "mock"}}, {}, {}, "engine", None),
        ({"llm": {"backend": "mock"}}, {"gpuCount": 0}, {}, None, None),
        ({}, {"gpuCount": 0}, {}, None, "0.90"),  # no GPU at all (it would not start)
    ],
)
def test_the_sidecar_rule_and_who_holds_the_gpu(
    models: dict, resources: dict, overrides: dict, holder: str | None, utilization: str | None
) -> None:
    spec = {"tutorId": 1, "models": models, "resources": resources}
    built = objects.build_engine_deployment(objects.resolve(engine(spec), defaults(**overrides)), 1)
    by_name = containers(built)
    holders = [n for n, c in by_name.items() if "nvidia.com/gpu" in c["resources"]["limits"]]
    assert holders == ([holder] if holder else [])
    if utilization is None:
        assert set(by_name) == {"engine"}
        return
    assert f"--gpu-memory-utilization={utilization}" in by_name["vllm"]["args"]
    env = env_of(by_name["engine"])
    assert env["ENGINE_LLM_BASE_URL"] == "http://127.0.0.1:8001/v1"
    assert env["ENGINE_LLM_MODEL"] == "Qwen/Qwen2.5-7B-Instruct"


def test_an_external_llm_url_replaces_the_sidecar() -> None:
    spec = {"tutorId": 1, "models": {"llm": {"baseUrl": "http://llm.shared:8000/v1"}}}
    built = objects.build_engine_deployment(objects.resolve(engine(spec), defaults()), 1)
    assert list(containers(built)) == ["engine"]
    env = env_of(containers(built)["engine"])
    assert env["ENGINE_LLM_BASE_URL"] == "http://llm.shared:8000/v1"
    assert "ENGINE_ASR_DEVICE" not in env
    assert {v["name"] for v in built["spec"]["template"]["spec"]["volumes"]} == {"tmp"}


def test_settings_shape_every_default_engine() -> None:
    custom = defaults(
        image="img:1",
        gpu={"count": 0},
        nodeSelector={"pool": "cpu"},
        tolerations=[],
        apiKeySecret="",
        models={"llm": {"backend": "mock", "model": ""}},
    )
    built = objects.build_engine_deployment(
        objects.resolve(engine(objects.default_engine_spec(3, custom)), custom), 0
    )
    pod = built["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "img:1"
    assert pod["nodeSelector"] == {"pool": "cpu"} and pod["tolerations"] == []
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "ENGINE_API_KEY" not in env and "ENGINE_LLM_MODEL" not in env
    assert env["ENGINE_LLM_BACKEND"] == "mock"


def test_extra_env_overrides_by_name() -> None:
    spec = {"tutorId": 1, "env": [{"name": "ENGINE_PORT", "value": "9000"}]}
    built = objects.build_engine_deployment(objects.resolve(engine(spec), defaults()), 1)
    env = built["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == "ENGINE_PORT"] == ["9000"]


def test_a_replacement_drops_removed_fields_and_keeps_what_others_own() -> None:
    before = {
        "tutorId": 1,
        "nodeSelector": {"pool": "a100", "zone": "a"},
        "resources": {"gpuClaimTemplate": "single-gpu"},
    }
    live = objects.build_engine_deployment(objects.resolve(engine(before), defaults()), 2)
    live["metadata"].update(resourceVersion="41", uid="u-1", finalizers=["x/y"])
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "3"
    live["metadata"]["labels"]["team"] = "math"
    live["status"] = {"replicas": 2}
    after = {"tutorId": 1, "nodeSelector": {"pool": "a100"}}  # zone and the DRA claim gone
    built = objects.build_engine_deployment(objects.resolve(engine(after), defaults()), 0)
    new = objects.deployment_replacement(live, built, 2)
    pod = new["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert "resourceClaims" not in pod
    assert all("claims" not in c["resources"] for c in pod["containers"])
    assert new["spec"]["replicas"] == 2 and "status" not in new
    meta = new["metadata"]
    assert (meta["resourceVersion"], meta["uid"], meta["finalizers"]) == ("41", "u-1", ["x/y"])
    assert meta["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert meta["annotations"][names.SPEC_HASH] == built["metadata"]["annotations"][names.SPEC_HASH]
    assert meta["labels"]["team"] == "math"


def test_placement_fields_reach_the_pod_only_when_set() -> None:
    bare = objects.build_engine_deployment(objects.resolve(default_body(), defaults()), 1)["spec"][
        "template"
    ]
    for field in (
        "imagePullSecrets",
        "serviceAccountName",
        "priorityClassName",
        "affinity",
        "topologySpreadConstraints",
    ):
        assert field not in bare["spec"], field
    custom = defaults(
        imagePullSecrets=[{"name": "regcred"}],
        serviceAccountName="engine",
        priorityClassName="gpu-high",
        topologySpreadConstraints=[
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}
        ],
    )
    pod = objects.build_engine_deployment(objects.resolve(engine({"tutorId": 3}), custom), 1)[
        "spec"
    ]["template"]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["serviceAccountName"] == "engine"
    assert pod["spec"]["automountServiceAccountToken"] is False  # engines never call the API
    assert pod["spec"]["priorityClassName"] == "gpu-high"
    spread = pod["spec"]["topologySpreadConstraints"][0]
    assert spread["labelSelector"] == {"matchLabels": names.selector_labels("tutor-3")}


def test_scaling_comes_from_spec_or_defaults_and_only_defaults_are_deletable() -> None:
    deleting = defaults(idlePolicy="Delete")
    default = objects.build_default_engine(7, "tutors", deleting)
    ours = objects.engine_scaling(objects.resolve(default, deleting))
    assert ours.deletable and ours.idle_policy == "Delete"
    admin = objects.engine_scaling(
        objects.resolve(
            engine({"tutorId": 42, "maxSessionsPerReplica": 2, "idlePolicy": "Delete"}), defaults()
        )
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
        ("tutor-5", {"tutorId": 5, "port": 8001}, "server.port must differ"),
        ("tutor-5", {"tutorId": 5, "port": 8001, "models": {"llm": {"backend": "mock"}}}, None),
    ],
)
def test_spec_error(name: str, spec: dict, problem: str | None) -> None:
    _, error = objects.checked({"metadata": {"name": name}, "spec": spec}, defaults())
    assert (error is None) if problem is None else (problem in error)


def test_openai_without_a_url_needs_the_sidecar() -> None:
    body = {"metadata": {"name": "tutor-5"}, "spec": {"tutorId": 5}}
    _, error = objects.checked(body, defaults(vllm={"enabled": False}))
    assert error is not None and "baseUrl is required" in error
    body["spec"]["models"] = {"llm": {"baseUrl": "http://llm:8000/v1"}}
    assert objects.checked(body, defaults(vllm={"enabled": False}))[1] is None


@pytest.mark.parametrize(
    ("tutor_id", "expected"), [(0, "tutor-0"), (7, "tutor-7"), (123456789, "tutor-123456789")]
)
def test_engine_name(tutor_id: int, expected: str) -> None:
    assert names.engine_name(tutor_id) == expected


@pytest.mark.parametrize("bad", [-1, "7", 1.5, True, None])
def test_engine_name_rejects_non_ids(bad: object) -> None:
    with pytest.raises(ValueError):
        names.engine_name(bad)  # type: ignore[arg-type]


def test_the_history_ttl_outlives_the_session_timeout_by_the_margin() -> None:
    assert objects.history_ttl_seconds(3600, 300) == 3900
    assert objects.history_ttl_seconds(60, 0) == 60
    custom = defaults(history={"sessionTimeoutSeconds": 1800, "ttlMarginSeconds": 120})
    env = env_of(
        containers(objects.build_engine_deployment(objects.resolve(default_body(), custom), 1))[
            "engine"
        ]
    )
    assert env["ENGINE_SESSION_TTL_SECONDS"] == "1920"
    assert env["ENGINE_MAX_HISTORY_MESSAGES"] == "40"


def test_engines_get_the_history_store_with_the_password_by_reference_only() -> None:
    custom = defaults(
        history={
            "url": "redis://tutor-history.tutors.svc:6379/0",
            "passwordSecret": "tutor-history",
            "passwordKey": "redis-password",
        }
    )
    built = objects.build_engine_deployment(objects.resolve(default_body(), custom), 1)
    env = {e["name"]: e for e in containers(built)["engine"]["env"]}
    assert env["ENGINE_HISTORY_URL"]["value"] == "redis://tutor-history.tutors.svc:6379/0"
    assert env["ENGINE_HISTORY_PASSWORD"] == {
        "name": "ENGINE_HISTORY_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "tutor-history", "key": "redis-password"}},
    }
    # No store configured: no history variables (the engine keeps its own default).
    bare = env_of(
        containers(objects.build_engine_deployment(objects.resolve(default_body(), defaults()), 1))[
            "engine"
        ]
    )
    assert "ENGINE_HISTORY_URL" not in bare and "ENGINE_HISTORY_PASSWORD" not in bare
    # A URL without a Secret: a store without a password.
    open_store = defaults(history={"url": "redis://redis:6379/0"})
    env = env_of(
        containers(objects.build_engine_deployment(objects.resolve(default_body(), open_store), 1))[
            "engine"
        ]
    )
    assert (
        env["ENGINE_HISTORY_URL"] == "redis://redis:6379/0" and "ENGINE_HISTORY_PASSWORD" not in env
    )


@pytest.mark.parametrize(
    ("prestop", "drain", "grace"), [(5, 20, 30), (0, 20, 25), (10, 60, 75), (0, 0, 5)]
)
def test_the_grace_period_covers_the_prestop_pause_and_the_drain(
    prestop: int, drain: int, grace: int
) -> None:
    assert objects.termination_grace_seconds(prestop, drain) == grace
    custom = defaults(preStopSeconds=prestop, drainSeconds=drain)
    pod = objects.build_engine_deployment(objects.resolve(default_body(), custom), 1)["spec"][
        "template"
    ]["spec"]
    assert pod["terminationGracePeriodSeconds"] == grace
    engine_c, vllm = containers({"spec": {"template": {"spec": pod}}}).values()
    assert env_of(engine_c)["ENGINE_DRAIN_SECONDS"] == str(drain)
    if prestop:
        assert engine_c["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", str(prestop)]}}}
    else:
        assert "lifecycle" not in engine_c
    # The sidecar keeps serving the LLM until the engine's drain is over.
    if prestop + drain:
        assert vllm["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(prestop + drain)]
    else:
        assert "lifecycle" not in vllm


@pytest.mark.parametrize(("value", "grace"), [("60", 65), ("7.5", 13), ("soon", 25)])
def test_an_engine_that_sets_its_own_drain_gets_a_grace_period_for_it(
    value: str, grace: int
) -> None:
    spec = {"tutorId": 1, "env": [{"name": "ENGINE_DRAIN_SECONDS", "value": value}]}
    pod = objects.build_engine_deployment(
        objects.resolve(engine(spec), defaults(preStopSeconds=0)), 1
    )
    assert pod["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == grace


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ('{"vllm": {"imag": "v:1"}}', "engine_defaults.vllm.imag: Extra inputs are not permitted"),
        ('{"maxReplicas": 0}', "engine_defaults.maxReplicas: Input should be greater than"),
        ("{not json", 'field "engine_defaults"'),
    ],
)
def test_a_wrong_engine_default_stops_the_operator_naming_it(
    document: str, named: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TUTOR_OPERATOR_ENGINE_DEFAULTS", document)
    with pytest.raises(SystemExit) as exited:
        operator_main.main([])
    assert exited.value.code == 2
    assert named in capsys.readouterr().err


def test_flat_engine_variables_from_before_the_document_are_named_as_ignored() -> None:
    names = ["TUTOR_OPERATOR_ENGINE_IMAGE", "TUTOR_OPERATOR_NAMESPACE", "PATH", "TUTOR_OPERATOR_"]
    names += ["TUTOR_OPERATOR_ENGINE_DEFAULTS", "TUTOR_OPERATOR_GPU_COUNT"]
    assert unknown_variables(names) == [
        "TUTOR_OPERATOR_",
        "TUTOR_OPERATOR_ENGINE_IMAGE",
        "TUTOR_OPERATOR_GPU_COUNT",
    ]
