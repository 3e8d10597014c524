"""Local engines never outlive their gateway: SIGKILL of the gateway, stale records, the watch.

Real processes throughout: ``python -m tutor_gateway`` (which starts real engines), engines
started by hand, and small parent/child pairs for the engine's parent watch. Every wait is a
deadline on a condition, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tutor_gateway.local.registry import (
    START_TIME_SLACK,
    EngineRecord,
    EngineRegistry,
    Identity,
    verdict,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.processes import (
    ServerProcess,
    free_port,
    gateway_argv,
    gateway_env,
    start_server,
)
from tests.support.waiting import wait_for

GONE_WITHIN = 15.0  # seconds: the bound for engines to disappear after their gateway died


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (binding succeeds; TIME_WAIT does not count)."""
    try:
        socket.create_server(("127.0.0.1", port)).close()
    except OSError:
        return False
    return True


def gone(pid: int) -> bool:
    """No live process has this pid (a zombie holds no memory and no socket)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def start_gateway(tmp_path: Path, state_dir: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``python -m tutor_gateway`` (mock backends, STATE_DIR=state_dir) as a process."""
    started: list[ServerProcess] = []

    def start(port: int | None = None, **env: Any) -> ServerProcess:
        port = port or free_port()
        gateway = start_server(
            gateway_argv(),
            gateway_env(port, state_dir, **env),
            port,
            tmp_path / f"gateway-{len(started)}.log",
            "/health",
            cwd=tmp_path,
        )
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        engines = []
        with contextlib.suppress(psutil.Error):
            engines = psutil.Process(gateway.process.pid).children()
        if gateway.process.poll() is None:
            gateway.process.terminate()
            try:
                gateway.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                gateway.process.kill()
                gateway.process.wait()
        for engine in engines:  # never leave one behind, even if a test failed
            with contextlib.suppress(psutil.Error):
                engine.kill()
    EngineRegistry(state_dir).stop_stale(grace=1)


def create_session(gateway: ServerProcess, tutor_id: int) -> dict[str, Any]:
    response = httpx.post(
        f"{gateway.http}/v1/sessions", json={"tutor_id": tutor_id, "student_id": 1}, timeout=30
    )
    assert response.status_code == 201, response.text
    return response.json()


def open_ws(gateway: ServerProcess, session: dict[str, Any], query: str = "") -> ClientConnection:
    url = f"ws://127.0.0.1:{gateway.port}/ws/ws/{session['session_id']}"
    return connect(f"{url}?token={session['engine_token']}{query}", open_timeout=30)


def say(ws: ClientConnection, text: str) -> dict[str, Any]:
    ws.send(json.dumps({"type": "text", "content": text}))
    return json.loads(ws.recv(timeout=60))


def records(state_dir: Path) -> dict[int, EngineRecord]:
    found = {}
    for _, record in EngineRegistry(state_dir).records():
        assert record is not None
        found[record.pid] = record
    return found


def kill_and_wait_for_engines(gateway: ServerProcess, engines: dict[int, int]) -> float:
    """SIGKILL the gateway; seconds until all its engines are gone and their ports free."""
    gateway.process.kill()
    killed = time.monotonic()
    gateway.process.wait(timeout=10)
    wait_for(lambda: all(gone(pid) for pid in engines), GONE_WITHIN, "engines gone")
    took = time.monotonic() - killed
    wait_for(lambda: all(port_is_free(port) for port in engines.values()), 5, "ports freed")
    return took


def serves_a_conversation(gateway: ServerProcess, tutor_id: int) -> None:
    with open_ws(gateway, create_session(gateway, tutor_id)) as ws:
        reply = say(ws, "are you there")
    assert reply["type"] == "text" and f"Tutor {tutor_id} heard" in reply["content"]


def test_engines_die_with_a_sigkilled_gateway_and_a_new_gateway_serves(
    start_gateway: Callable[..., ServerProcess], state_dir: Path
) -> None:
    gateway = start_gateway()
    first, second = create_session(gateway, 1), create_session(gateway, 2)
    with open_ws(gateway, first) as ws1, open_ws(gateway, second) as ws2:
        assert "Tutor 1 heard" in say(ws1, "hello")["content"]
        assert "Tutor 2 heard" in say(ws2, "hello")["content"]
        engines = gateway.engines()
        assert len(engines) == 2 and all(engines.values()), engines
        recorded = records(state_dir)
        assert set(recorded) == set(engines), "each running engine is on record"
        assert {r.tutor_id for r in recorded.values()} == {1, 2}
        assert all(r.port == engines[pid] for pid, r in recorded.items())
        assert all(r.gateway_pid == gateway.process.pid for r in recorded.values())

        took = kill_and_wait_for_engines(gateway, engines)
    print(f"\nSIGKILL → both engines gone and ports free: {took:.2f}s")

    again = start_gateway(port=gateway.port)
    assert not set(records(state_dir)) & set(engines), "records of the dead engines are gone"
    serves_a_conversation(again, 1)
    assert len(records(state_dir)) == 1
    again.process.terminate()
    again.process.wait(timeout=20)
    assert records(state_dir) == {}, "a clean stop leaves no record"


def test_an_engine_mid_reply_dies_with_its_gateway(
    start_gateway: Callable[..., ServerProcess], state_dir: Path
) -> None:
    gateway = start_gateway(ENGINE_LLM_MOCK_TOKEN_SECONDS=0.5)
    busy, idle = create_session(gateway, 1), create_session(gateway, 2)
    with open_ws(gateway, idle) as ws:
        say(ws, "x")  # tutor 2's engine is up
    with open_ws(gateway, busy, "&stream=1") as ws:
        ws.send(json.dumps({"type": "text", "content": "tell me a long story"}))
        while (message := json.loads(ws.recv(timeout=60)))["type"] != "text_delta":
            assert message["type"] not in ("text", "error"), message
        engines = gateway.engines()
        assert len(engines) == 2
        took = kill_and_wait_for_engines(gateway, engines)
        with pytest.raises(ConnectionClosed):
            while True:  # what the engine had sent is gone with the gateway; the socket closes
                ws.recv(timeout=10)
    print(f"\nSIGKILL mid-reply → both engines gone and ports free: {took:.2f}s")
    serves_a_conversation(start_gateway(port=gateway.port), 1)


def test_without_the_parent_death_signal_the_pipe_ends_the_engine(
    start_gateway: Callable[..., ServerProcess],
) -> None:
    """Through a wrapper that forks, the engine is no direct child: only the pipe can fire."""
    wrapper = f"sh -c '{sys.executable} -m tutor_engine \"$@\"; exit $?' sh"
    gateway = start_gateway(ENGINE_COMMAND=wrapper)
    serves_a_conversation(gateway, 1)
    tree = psutil.Process(gateway.process.pid).children(recursive=True)
    engine = next(p for p in tree if p.cmdline()[1:3] == ["-m", "tutor_engine"])
    assert engine.ppid() != gateway.process.pid, "the engine runs under the wrapper"
    took = kill_and_wait_for_engines(
        gateway, {p.pid: gateway.engines().get(p.pid, 0) for p in tree}
    )
    print(f"\nSIGKILL → engine behind a wrapper gone (pipe): {took:.2f}s")
    assert f"gateway (pid {gateway.process.pid}) is gone (its pipe closed)" in gateway.log()


def test_a_new_gateway_stops_stale_engines_and_leaves_other_processes_alone(
    start_gateway: Callable[..., ServerProcess], state_dir: Path, tmp_path: Path
) -> None:
    # A gateway that is dead, its pid and start time on record.
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    dead_start = psutil.Process(dead.pid).create_time()
    dead.kill()
    dead.wait()

    # An engine whose parent watch cannot fire (started without one), as that gateway left it.
    listener = socket.create_server(("127.0.0.1", 0))
    stray_port = listener.getsockname()[1]
    env = {**os.environ, "ENGINE_ASR_BACKEND": "mock", "ENGINE_TTS_BACKEND": "mock"}
    with (tmp_path / "stray.log").open("wb") as log_file:
        stray = subprocess.Popen(
            [sys.executable, "-m", "tutor_engine", "--fd", str(listener.fileno())],
            env={**env, "ENGINE_LLM_BACKEND": "mock", "ENGINE_TUTOR_ID": "9"},
            pass_fds=(listener.fileno(),),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    listener.close()
    wait_for(lambda: not port_is_free(stray_port), 30, "stray engine listening")

    # Two unrelated processes whose pids are on record with the wrong start time or command.
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    wrong_start, wrong_command = subprocess.Popen(sleeper), subprocess.Popen(sleeper)
    try:
        registry = EngineRegistry(state_dir)

        def record(pid: int, start: float, cmdline: list[str], tutor: int) -> None:
            registry.write(
                EngineRecord(pid, start, tuple(cmdline), tutor, stray_port, dead.pid, dead_start)
            )

        seen = {p.pid: psutil.Process(p.pid) for p in (stray, wrong_start, wrong_command)}
        stray_cmdline = seen[stray.pid].cmdline()
        record(stray.pid, seen[stray.pid].create_time(), stray_cmdline, 9)
        record(wrong_start.pid, seen[wrong_start.pid].create_time() - 3600, sleeper, 10)
        record(wrong_command.pid, seen[wrong_command.pid].create_time(), stray_cmdline, 11)
        (state_dir / "engines" / "engine-1.json").write_text("{not json")

        gateway = start_gateway()

        assert stray.wait(timeout=GONE_WITHIN) is not None
        wait_for(lambda: port_is_free(stray_port), 5, "stray engine's port freed")
        assert wrong_start.poll() is None and wrong_command.poll() is None, "left alone"
        assert records(state_dir) == {}, "stale, foreign and unreadable records are dropped"
        assert f"stopping stale engine for tutor 9 (pid {stray.pid}" in gateway.log()
        serves_a_conversation(gateway, 9)
    finally:
        for process in (stray, wrong_start, wrong_command):
            process.kill()
            process.wait()


# The engine's parent watch on its own: a parent process starts a child that arms the watch.

CHILD = textwrap.dedent(
    """
    import os, sys, time
    from tutor_engine.parent_watch import watch_parent
    mode, parent, fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if mode.startswith("late-"):  # arm only once the parent is surely dead
        while os.getppid() == parent:
            time.sleep(0.01)
    watch_parent(
        parent,
        fd if mode in ("pipe", "late-pipe") else None,
        death_signal=mode in ("pdeathsig", "late-pipe"),
        poll_interval=0.1 if mode in ("poll", "late-poll") else 3600,
    )
    print("armed", flush=True)
    time.sleep(600)
    """
)
PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    read_fd, write_fd = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", sys.argv[1], sys.argv[2], str(os.getpid()), str(read_fd)],
        pass_fds=(read_fd,),
    )
    print(child.pid, flush=True)
    if not sys.argv[2].startswith("late-"):
        time.sleep(600)
    """
)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        pytest.param(
            "pdeathsig",
            None,
            marks=pytest.mark.skipif(sys.platform != "linux", reason="Linux only"),
        ),
        ("pipe", "its pipe closed"),
        ("poll", "reparented"),
        ("late-pipe", "its pipe closed"),
        ("late-poll", "is gone"),
    ],
)
def test_the_parent_watch_ends_the_child_when_its_parent_dies(
    mode: str, reason: str | None, tmp_path: Path
) -> None:
    """Each mechanism alone (the others disabled), and a parent already dead when it arms."""
    child_log = tmp_path / "child.log"
    with child_log.open("wb") as log_file:
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, CHILD, mode],
            stdout=subprocess.PIPE,
            stderr=log_file,
        )
    assert parent.stdout is not None
    lines = [parent.stdout.readline().strip()]
    if not mode.startswith("late-"):
        lines.append(parent.stdout.readline().strip())  # "armed", before or after the pid
        assert b"armed" in lines, child_log.read_text()
    child = next(int(line) for line in lines if line.isdigit())
    try:
        if mode.startswith("late-"):
            parent.wait(timeout=30)
        else:
            parent.kill()
            parent.wait()
        started = time.monotonic()
        wait_for(lambda: gone(child), GONE_WITHIN, "child gone", interval=0.05)
        took = time.monotonic() - started
        print(f"\n{mode}: child gone {took:.2f}s after its parent")
        if reason:
            assert reason in child_log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        parent.stdout.close()


# The registry's pure parts.

RECORD = EngineRecord(
    pid=4242,
    start_time=1_800_000_000.25,
    cmdline=("/usr/bin/python3", "-m", "tutor_engine", "--fd", "7"),
    tutor_id=3,
    port=41234,
    gateway_pid=4000,
    gateway_start_time=1_799_999_990.5,
)


def test_a_record_round_trips_through_json() -> None:
    assert EngineRecord.from_json(RECORD.to_json()) == RECORD
    assert json.loads(RECORD.to_json())["cmdline"] == list(RECORD.cmdline)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        '{"pid": 1}',
        RECORD.to_json().replace('"pid": 4242', '"pid": 0'),
        RECORD.to_json().replace('"pid": 4242', '"pid": "x"'),
        RECORD.to_json().replace('["/usr/bin/python3", "-m", "tutor_engine", "--fd", "7"]', "[]"),
    ],
)
def test_what_is_not_a_record_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        EngineRecord.from_json(text)


SAME = Identity(RECORD.start_time, RECORD.cmdline)


@pytest.mark.parametrize(
    ("engine", "gateway_start", "expected"),
    [
        # its gateway is alive: another gateway's engine, not ours to touch
        (SAME, RECORD.gateway_start_time, "keep"),
        (None, RECORD.gateway_start_time, "keep"),
        (SAME, RECORD.gateway_start_time + 0.5, "keep"),
        # its gateway is dead (no such pid, or the pid is another process now)
        (SAME, None, "stop"),
        (SAME, RECORD.gateway_start_time + 60, "stop"),
        (Identity(RECORD.start_time + START_TIME_SLACK / 2, RECORD.cmdline), None, "stop"),
        # the engine is gone, or its pid now belongs to another process: left alone
        (None, None, "forget"),
        (Identity(RECORD.start_time + 3600, RECORD.cmdline), None, "forget"),
        (Identity(RECORD.start_time - START_TIME_SLACK * 2, RECORD.cmdline), None, "forget"),
        (Identity(RECORD.start_time, ("sleep", "600")), None, "forget"),
        (Identity(RECORD.start_time, (*RECORD.cmdline, "--extra")), None, "forget"),
    ],
)
def test_verdict(engine: Identity | None, gateway_start: float | None, expected: str) -> None:
    assert verdict(RECORD, engine, gateway_start) == expected


def test_a_registry_without_a_state_dir_keeps_nothing(tmp_path: Path) -> None:
    registry = EngineRegistry(None)
    assert registry.add(os.getpid(), 1, 1234, ["python"]) is None
    assert registry.records() == [] and registry.stop_stale() == []


def test_a_registry_records_and_forgets(tmp_path: Path) -> None:
    registry = EngineRegistry(tmp_path / "state")
    assert registry.records() == [], "a missing state directory is an empty one"
    argv = [sys.executable, "-c", "import time; time.sleep(600)"]
    engine = subprocess.Popen(argv)
    try:
        record = registry.add(engine.pid, 5, 1234, argv)
        assert record is not None and record.gateway_pid == os.getpid()
        # What exec was given, which /proc shows once the kernel has set it up (at first, it
        # may read as empty: the race the recorded argv avoids).
        assert record.cmdline == tuple(argv)
        wait_for(lambda: psutil.Process(engine.pid).cmdline() == argv, 30, "the child's argv")
        path = tmp_path / "state" / "engines" / f"engine-{engine.pid}.json"
        assert registry.records() == [(path, record)]
        assert registry.stop_stale() == [], "its gateway (this process) is alive: kept"
        assert len(registry.records()) == 1 and engine.poll() is None
        registry.remove(engine.pid)
        registry.remove(engine.pid)
        assert registry.records() == []
    finally:
        engine.kill()
        engine.wait()
    assert registry.add(engine.pid, 5, 1234, argv) is None, "an exited engine is not recorded"
