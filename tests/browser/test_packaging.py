"""The browser files ship in the wheel, and the npm package matches the module and project."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from .conftest import ROOT

STATIC = ROOT / "gateway" / "tutor_gateway" / "static"
SHIPPED = ["tutor-client.js", "tutor-client.d.ts", "package.json", "demo.html", "demo.js"]
SHIPPED += ["demo.css"]


def test_wheel_ships_the_static_files(tmp_path: Path) -> None:
    """Built from a copy of the sources, as the image's ``pip install .`` builds it."""
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for folder in ("gateway", "operator", "contract", "engine-image/tutor_engine"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheel_dir = tmp_path / "dist"
    build = ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(source)]
    subprocess.run([*pip, *build], check=True, timeout=300)
    (wheel,) = wheel_dir.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"tutor_gateway/static/{name}" for name in SHIPPED} <= names


def test_npm_package_names_the_module_and_the_projects_version() -> None:
    package = json.loads((STATIC / "package.json").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert package["version"] == project["version"]
    assert package["type"] == "module" and package["exports"]["."]["default"] == "./tutor-client.js"
    assert set(package["files"]) == {"tutor-client.js", "tutor-client.d.ts"}
    assert "dependencies" not in package


def test_type_declarations_match_the_modules_exports() -> None:
    pattern = r"^export (?:declare )?(?:const|function|class) (\w+)"
    module = set(re.findall(pattern, (STATIC / "tutor-client.js").read_text(), flags=re.M))
    declared = set(re.findall(pattern, (STATIC / "tutor-client.d.ts").read_text(), flags=re.M))
    assert (
        module
        == declared
        == {
            "CLOSE_CODES",
            "CLIENT_EVENTS",
            "shouldReconnect",
            "backoffDelay",
            "toBase64",
            "fromBase64",
            "TutorClient",
        }
    )
