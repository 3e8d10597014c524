"""In a pod, an engine whose models fail to load says why in its termination message and exits."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from tests.support.processes import engine_argv, free_port

pytestmark = pytest.mark.timeout(60)


def test_a_load_failure_is_written_to_the_termination_log_and_exits_3(
    tmp_path: pathlib.Path,
) -> None:
    termination = tmp_path / "termination-log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env.update(
        ENGINE_ASR_BACKEND="faster-whisper",
        ENGINE_ASR_MODEL="/nonexistent",
        ENGINE_EXIT_ON_LOAD_FAILURE="true",
        ENGINE_TERMINATION_LOG=str(termination),
    )
    done = subprocess.run(engine_argv(free_port()), env=env, capture_output=True, timeout=50)
    assert done.returncode == 3
    message = termination.read_text()
    assert message.startswith("faster-whisper: ") and "/nonexistent" in message
    assert "models failed to load; exiting: faster-whisper" in done.stderr.decode()
