"""What can be checked here of the images, the kind e2e script and the CI workflow."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess

import pytest
import yaml

from .conftest import ROOT

SCRIPT = ROOT / "scripts" / "e2e-kind.sh"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
DOCKERFILES = ["Dockerfile", "engine-image/Dockerfile", "engine-image/Dockerfile.mock"]


def make_targets() -> set[str]:
    """The targets the Makefile defines (``name:`` at the start of a line, variables aside)."""
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M))


def make_calls(text: str) -> set[str]:
    """Targets named by ``make a b VAR=x`` commands in a shell text."""
    return {
        arg
        for args in re.findall(r"\bmake\s+([^;&|#\n]+)", text)
        for arg in args.split()
        if "=" not in arg and not arg.startswith("-")
    }


def test_workflow_runs_the_suite_and_the_kind_e2e() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert set(workflow[True]) == {"push", "pull_request"}  # YAML 1.1 reads "on" as True
    runs = {
        job: " ; ".join(step["run"] for step in spec["steps"] if "run" in step)
        for job, spec in workflow["jobs"].items()
    }
    assert {"make test", "make lint"} <= set(runs["test"].split(" ; "))
    assert runs["e2e-kind"] == "make e2e-kind"
    assert workflow["jobs"]["e2e-kind"]["needs"] == "test"
    assert make_calls("\n".join(runs.values())) <= make_targets()


def test_e2e_script_is_valid_bash_and_names_what_exists() -> None:
    text = SCRIPT.read_text()
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert make_calls(text) <= make_targets()
    for path in re.findall(r"\b((?:charts|tests|scripts)/[\w./-]+)", text):
        assert (ROOT / path).exists(), path
    values = yaml.safe_load((ROOT / "tests/e2e/values-kind.yaml").read_text())
    tag = re.search(r"^TAG=(\S+)", text, flags=re.M).group(1)  # type: ignore[union-attr]
    for image in (values["image"], values["engine"]["image"]):
        assert f"{image['repository']}:$TAG" in text and image["tag"] == tag


def test_make_targets_the_workflow_and_script_need_exist() -> None:
    assert {"test", "lint", "images", "e2e-kind", "chart-crds"} <= make_targets()


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_copies_files_that_exist_and_runs_a_real_module(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.M):
        for source in sources.split():
            assert (ROOT / source).exists(), f"{dockerfile}: COPY {source}"
            assert source.split("/")[0] not in ignored, f"{dockerfile}: {source} is dockerignored"
    assert re.search(r"^USER 10001:10001$", text, flags=re.M), "images run as a non-root uid"
    cmd = re.search(r'^CMD \["python", "-m", "(\w+)"\]$', text, flags=re.M)
    assert cmd and importlib.util.find_spec(cmd.group(1)), f"{dockerfile}: CMD"


def test_operator_module_runs_in_the_serving_image() -> None:
    """The chart starts the operator with python -m tutor_operator from the same image."""
    assert importlib.util.find_spec("tutor_operator.__main__")
    assert "COPY operator/ operator/" in (ROOT / "Dockerfile").read_text()
