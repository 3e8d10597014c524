"""What can be checked here of the images, the kind e2e script and the CI workflow."""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import tomllib

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


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; (]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _closure(requirements: list[str]) -> set[str]:
    """The distributions ``requirements`` install, with their dependencies (extras aside)."""
    todo, seen = [_name(r) for r in requirements], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            requires = importlib.metadata.requires(name) or []
            todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def test_serving_image_installs_everything_gateway_and_operator_import() -> None:
    """The image installs ".[kube]": each third-party import must come with those requirements."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = _closure(project["dependencies"] + project["optional-dependencies"]["kube"])
    distributions = importlib.metadata.packages_distributions()
    missing = set()
    for package in ("gateway/tutor_gateway", "operator/tutor_operator"):
        for source in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    dists = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
                    dists = dists or {
                        d.lower().replace("_", "-")
                        for d in distributions.get(module.split(".")[0], [])
                    }
                    if dists and not dists & (installed | {"tutor-serving"}):
                        missing.add(f"{module} ({source.relative_to(ROOT)})")
    assert not missing, f"not installed by pyproject's dependencies + kube extra: {sorted(missing)}"


def test_one_kubernetes_client_library_for_the_projects_own_calls() -> None:
    """lightkube for the gateway's and the operator's calls (kopf keeps its own client): the
    official client is neither imported nor required."""
    imported = set()
    for package in ("gateway/tutor_gateway", "operator/tutor_operator", "contract/tutor_contract"):
        for source in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    imported.add(node.module.split(".")[0])
    assert "kubernetes" not in imported and "lightkube" in imported
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    kube = {_name(r): r for r in project["optional-dependencies"]["kube"]}
    assert "kubernetes" not in kube
    # gateway/tutor_gateway/kube and the operator import httpx2, which lightkube has from 1.0.
    assert "httpx2" in imported and kube["lightkube"] == "lightkube>=1.0"
