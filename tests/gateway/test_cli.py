"""The command lines, run as a user runs them (subprocesses): ``--help`` and ``--version`` of
the gateway, the engine and the operator start nothing; the bundled client says in one line
that it cannot reach a gateway."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from tutor_contract.version import distribution_version

from tests.conftest import GatewayFactory

PROGRAMS = {
    "tutor_gateway": "tutor-gateway",
    "tutor_engine": "tutor-engine",
    "tutor_operator": "tutor-operator",
}


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout=60):
    """``python -m <args>``; a server that started instead would hit the timeout."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("module", sorted(PROGRAMS))
def test_version_names_the_program_and_the_distribution(module: str) -> None:
    if module == "tutor_operator":
        pytest.importorskip("kopf", reason="the operator needs the kube extra")
    result = run(module, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{PROGRAMS[module]} (tutor-serving) {distribution_version()}"
    assert result.stderr == ""


@pytest.mark.parametrize("module", sorted(PROGRAMS))
def test_help_prints_usage_and_starts_nothing(
    module: str, tmp_path: Path, closed_port: int
) -> None:
    if module == "tutor_operator":
        pytest.importorskip("kopf", reason="the operator needs the kube extra")
    env = {
        "MANAGEMENT_API_HOST": "127.0.0.1",
        "MANAGEMENT_API_PORT": str(closed_port),
        "ENGINE_PORT": str(closed_port),
        "STATE_DIR": str(tmp_path / "state"),
    }
    result = run(module, "--help", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {PROGRAMS[module]} ")
    assert "--version" in result.stdout and "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists(), "no state was created"
    assert list(tmp_path.iterdir()) == []
    assert not listening(closed_port)


def test_gateway_help_lists_its_settings() -> None:
    out = run("tutor_gateway", "--help").stdout
    for variable in (
        "MANAGEMENT_API_PORT [9000]",
        "MAX_SESSIONS [10]",
        "ENGINE_START_TIMEOUT_SECONDS",
        "GATEWAY_MODE [local]",
        "MANAGEMENT_API_KEYS",
    ):
        assert variable in out, variable
    assert "/docs" in out and "/asyncapi.yaml" in out


def test_secrets_have_no_default_in_the_help() -> None:
    env = {"MANAGEMENT_API_KEYS": "a-secret-in-the-env-xyz", "ENGINE_API_KEY": "another-secret"}
    out = run("tutor_gateway", "--help", env=env).stdout
    assert "a-secret-in-the-env-xyz" not in out and "another-secret" not in out


@pytest.mark.parametrize("module", sorted(PROGRAMS))
def test_an_unknown_option_is_a_usage_error(module: str) -> None:
    if module == "tutor_operator":
        pytest.importorskip("kopf", reason="the operator needs the kube extra")
    result = run(module, "--no-such-option")
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-option" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_client_says_in_one_line_that_no_gateway_answers(closed_port: int) -> None:
    base = f"http://127.0.0.1:{closed_port}"
    result = run("tutor_gateway.client", "--base-url", base, "--text", "hi")
    assert result.returncode == 3
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: cannot reach the gateway at {base} (")
    assert "refused" in lines[0].lower()


def test_the_client_says_in_one_line_that_the_websocket_is_unreachable(
    gateway_factory: GatewayFactory, closed_port: int
) -> None:
    # A gateway whose WEBSOCKET_URL points nowhere: the session is made, the socket is not.
    gateway = gateway_factory(websocket_url=f"ws://127.0.0.1:{closed_port}/ws")
    result = run("tutor_gateway.client", "--base-url", gateway.http, "--text", "hi")
    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: cannot open the conversation WebSocket (")
    assert "Traceback" not in result.stderr
    assert httpx.get(f"{gateway.http}/v1/sessions").json()["total"] == 0, "it ended its session"


def test_the_client_still_talks_to_a_gateway(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory()
    result = run("tutor_gateway.client", "--base-url", gateway.http, "--text", "hi", timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"type": "text"' in result.stdout and "heard: hi" in result.stdout
