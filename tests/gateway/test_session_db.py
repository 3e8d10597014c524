"""The local session store in STATE_DIR/sessions.db: its parts, and real gateway restarts.

The restart tests run ``python -m tutor_gateway`` (mock engines) on a STATE_DIR under
``tmp_path``, stop it with SIGTERM (or SIGKILL) and start it again on the same directory.
Every wait is a deadline on a condition, never a fixed sleep, except where the test needs a
session to be idle past its timeout while no gateway runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tutor_gateway.config import GatewaySettings, engine_session_ttl
from tutor_gateway.engines import EngineEndpoint
from tutor_gateway.local import engines as engines_module
from tutor_gateway.local.engines import LocalEngine, LocalEngines
from tutor_gateway.local.mode import LocalHousekeeping
from tutor_gateway.local.store import (
    SCHEMA_VERSION,
    SessionDbError,
    SqliteSessionStore,
    migrations_from,
)
from tutor_gateway.service import Gateway
from tutor_gateway.sessions import CapacityError, Session
from tutor_gateway.tokens import hash_token
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.processes import (
    ServerProcess,
    free_port,
    gateway_argv,
    gateway_env,
    launch_server,
    wait_ready,
)
from tests.support.waiting import wait_for

# --- Pure parts and the store on its own -------------------------------------------------


def test_migrations_lead_from_any_known_version_to_the_current_one() -> None:
    assert [number for number, _ in migrations_from(0)] == list(range(1, SCHEMA_VERSION + 1))
    assert migrations_from(SCHEMA_VERSION) == []
    for unknown in (-1, SCHEMA_VERSION + 1):
        with pytest.raises(ValueError, match="schema version"):
            migrations_from(unknown)


def test_the_engines_keep_history_a_minute_past_the_session_timeout(tmp_path: Path) -> None:
    assert engine_session_ttl(3600) == 3660
    assert engine_session_ttl(2.5) == 62.5
    settings = GatewaySettings(
        _env_file=None, state_dir=str(tmp_path / "state"), session_timeout_seconds=120
    )
    assert settings.local_engine_env() == {
        "ENGINE_HISTORY_URL": f"sqlite:///{(tmp_path / 'state').resolve()}/history.db",
        "ENGINE_SESSION_TTL_SECONDS": "180.0",
        "ENGINE_DRAIN_SECONDS": "4.0",  # inside the 5 s a stopped local engine is given
        "ENGINE_LLM_WAIT_SECONDS": "110.0",  # inside ENGINE_START_TIMEOUT_SECONDS (120)
        "ENGINE_LOG_FORMAT": "text",  # the gateway's LOG_FORMAT
    }
    assert settings.local_engine_env()["ENGINE_HISTORY_URL"].startswith("sqlite:////")


def test_an_engine_history_url_of_the_operator_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGINE_HISTORY_URL", "redis://127.0.0.1:6379/0")
    assert GatewaySettings(_env_file=None).local_engine_env()["ENGINE_HISTORY_URL"] == (
        "redis://127.0.0.1:6379/0"
    )
    monkeypatch.delenv("ENGINE_HISTORY_URL")
    env = tmp_path / ".env"
    env.write_text("ENGINE_HISTORY_URL=memory:\n")
    assert GatewaySettings(_env_file=env).local_engine_env()["ENGINE_HISTORY_URL"] == "memory:"


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stored_activity(path: Path, session_id: str) -> float:
    """last_activity as written in the database (read by another connection)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute(
            "SELECT last_activity FROM sessions WHERE session_id = ?", (session_id,)
        ).fetchone()
    return float(row[0])


def test_a_reopened_store_has_the_sessions_their_activity_and_their_endings(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "sessions.db"

    async def first_run() -> tuple[Session, Session]:
        clock = Clock()
        store = await SqliteSessionStore.open(path, max_sessions=2, clock=clock)
        kept = await store.create(1, 1, "kb-1", "a" * 64)
        ended = await store.create(2, 2, None, "b" * 64)
        with pytest.raises(CapacityError):
            await store.create(3, 3, None, "c" * 64)
        clock.now += 5
        await store.touch(kept.session_id)
        await store.delete(ended.session_id, "expired")
        await store.close()
        return kept, ended

    async def second_run(kept: Session, ended: Session) -> None:
        store = await SqliteSessionStore.open(path, max_sessions=2, clock=Clock(1100.0))
        assert await store.get(kept.session_id) == Session(
            kept.session_id, 1, 1, "kb-1", "a" * 64, "active", 1000.0, 1005.0
        )
        assert [s.session_id for s in await store.list()] == [kept.session_id]
        assert await store.get(ended.session_id) is None
        assert store.ended_reason(ended.session_id) == "expired"
        await store.create(4, 4, None, "d" * 64)  # the second place, freed by the expiry
        with pytest.raises(CapacityError, match=r"\(2\)"):
            await store.create(5, 5, None, "e" * 64)
        await store.close()

    asyncio.run(second_run(*asyncio.run(first_run())))
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_activity_is_written_at_most_once_per_interval_and_never_lost_on_close(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sessions.db"

    async def scenario() -> None:
        clock = Clock()
        store = await SqliteSessionStore.open(path, 10, activity_interval=10, clock=clock)
        session = await store.create(1, 1, None, "a" * 64)
        sid = session.session_id
        for step in (1, 2, 3):  # within one interval: one write, the rest in memory
            clock.now = 1000.0 + step
            await store.touch(sid)
        assert stored_activity(path, sid) == 1001.0
        assert (await store.get(sid)).last_activity == 1003.0  # what expiry sees
        assert [s.last_activity for s in await store.list()] == [1003.0]
        clock.now = 1012.0
        await store.touch(sid)
        assert stored_activity(path, sid) == 1012.0
        clock.now = 1015.0
        await store.touch(sid)
        assert stored_activity(path, sid) == 1012.0
        await store.close()
        assert stored_activity(path, sid) == 1015.0

    asyncio.run(scenario())


def test_activity_after_the_end_of_a_session_does_not_bring_it_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await SqliteSessionStore.open(tmp_path / "sessions.db", 10, activity_interval=0)
        session = await store.create(1, 1, None, "a" * 64)
        await store.delete(session.session_id)
        await store.touch(session.session_id)  # a relay's last word, after the DELETE
        assert await store.get(session.session_id) is None
        assert await store.count() == 0
        await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"this is not a database, it is a text file\n" * 200, "not a database"),
        (None, "unable to open"),  # a directory where the file should be
    ],
)
def test_an_unusable_database_is_a_startup_error_naming_the_file(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    path = tmp_path / "sessions.db"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(SessionDbError, match=problem) as info:
        asyncio.run(SqliteSessionStore.open(path, 10))
    assert str(path) in str(info.value)


def test_a_database_of_a_newer_gateway_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SessionDbError, match=f"schema version {SCHEMA_VERSION + 1}"):
        asyncio.run(SqliteSessionStore.open(path, 10))


# --- Ending a session tells its engine, within a bound -----------------------------------


class RecordingRouter:
    """An engine router that records which sessions it was told are over."""

    def __init__(self) -> None:
        self.released: list[str] = []

    async def endpoint(self, session: Session) -> EngineEndpoint:
        raise AssertionError("not used")

    async def release(self, session: Session) -> None:
        self.released.append(session.session_id)

    def report_failure(self, session: Session, endpoint: EngineEndpoint) -> None:
        raise AssertionError("not used")


class NoEngines:
    async def stop_idle(self, busy_tutors: set[int]) -> list[int]:
        return []


def test_expiry_and_delete_both_tell_the_engine(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = Clock()
        settings = GatewaySettings(_env_file=None, session_timeout_seconds=60)
        store = await SqliteSessionStore.open(tmp_path / "sessions.db", 10, clock=clock)
        router = RecordingRouter()
        gateway = Gateway(settings, store, router)  # type: ignore[arg-type]
        housekeeping = LocalHousekeeping(store, NoEngines(), settings)  # type: ignore[arg-type]
        idle, busy, deleted = [(await gateway.create_session(1, i, None))[0] for i in range(3)]
        clock.now += 30
        await store.touch(busy.session_id)
        await store.delete(deleted.session_id)
        await housekeeping.sweep(now=clock.now + 30)
        assert router.released == [deleted.session_id, idle.session_id]
        assert store.ended_reason(idle.session_id) == "expired"
        assert [s.session_id for s in await store.list()] == [busy.session_id]
        await store.close()

    asyncio.run(scenario())


class FakeProcess:
    returncode = None


def test_telling_an_engine_that_does_not_answer_is_bounded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An engine that accepts the connection and never answers costs RELEASE_TIMEOUT."""
    monkeypatch.setattr(engines_module, "RELEASE_TIMEOUT", 0.3)
    mute = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    session = Session("1b0e7e0c-0000-4000-8000-000000000000", 5, 1, None, "a" * 64, "active", 0, 0)

    async def scenario() -> float:
        engines = LocalEngines(api_key="k", start_timeout=1, idle_timeout=1)
        engine = LocalEngine(5, mute.getsockname()[1], FakeProcess())  # type: ignore[arg-type]
        engines._engines[5] = engine
        started = time.monotonic()
        await engines.release(session)
        took = time.monotonic() - started
        engines._engines.clear()
        await engines.close()
        return took

    with mute, caplog.at_level(logging.WARNING, "tutor_gateway.engines"):
        took = asyncio.run(scenario())
    assert took < 2, took
    assert "did not drop session 1b0e7e0c" in caplog.text


# --- Real gateway processes restarted on the same STATE_DIR ------------------------------


def stop_cleanly(gateway: ServerProcess) -> None:
    """SIGTERM, and wait for the clean exit (uvicorn re-raises the signal once done)."""
    gateway.process.terminate()
    gateway.process.wait(timeout=30)
    assert "Application shutdown complete" in gateway.log(), gateway.log()[-3000:]


def engine_environ(gateway: ServerProcess) -> dict[str, str]:
    """The environment of this gateway's (one) engine process."""
    (pid,) = gateway.engines()
    return psutil.Process(pid).environ()


class Gateways:
    """Starts ``python -m tutor_gateway`` on one STATE_DIR (mock engines), as often as asked."""

    def __init__(self, tmp_path: Path, state_dir: Path) -> None:
        self.tmp_path, self.state_dir = tmp_path, state_dir
        self.started: list[ServerProcess] = []

    def launch(self, **env: Any) -> ServerProcess:
        """Start one, without waiting for it."""
        port = free_port()
        gateway = launch_server(
            gateway_argv(),
            gateway_env(port, self.state_dir, **env),
            port,
            self.tmp_path / f"gateway-{len(self.started)}.log",
            cwd=self.tmp_path,
        )
        self.started.append(gateway)
        return gateway

    def start(self, **env: Any) -> ServerProcess:
        """Start one and wait until it serves."""
        gateway = self.launch(**env)
        wait_ready(gateway, "/health")
        return gateway


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def gateways(tmp_path: Path, state_dir: Path) -> Iterator[Gateways]:
    started = Gateways(tmp_path, state_dir)
    yield started
    for gateway in started.started:
        if gateway.process.poll() is None:
            gateway.process.kill()
            gateway.process.wait()


def create_session(gateway: ServerProcess, tutor_id: int = 1) -> dict[str, Any]:
    response = httpx.post(
        f"{gateway.http}/v1/sessions", json={"tutor_id": tutor_id, "student_id": 7}, timeout=30
    )
    assert response.status_code == 201, response.text
    return response.json()


def open_ws(gateway: ServerProcess, session: dict[str, Any]) -> ClientConnection:
    url = f"ws://127.0.0.1:{gateway.port}/ws/ws/{session['session_id']}"
    return connect(f"{url}?token={session['engine_token']}", open_timeout=30)


def say(ws: ClientConnection, text: str) -> dict[str, Any]:
    ws.send(json.dumps({"type": "text", "content": text}))
    return json.loads(ws.recv(timeout=60))


def close_code(gateway: ServerProcess, session: dict[str, Any]) -> int:
    """The code the gateway closes this session's WebSocket with, before any conversation."""
    with open_ws(gateway, session) as ws, pytest.raises(ConnectionClosed) as info:
        while True:
            assert json.loads(ws.recv(timeout=30))["type"] == "error"
    assert info.value.rcvd is not None
    return info.value.rcvd.code


def get(gateway: ServerProcess, session: dict[str, Any]) -> httpx.Response:
    return httpx.get(f"{gateway.http}/v1/sessions/{session['session_id']}", timeout=10)


def state_bytes(state_dir: Path) -> bytes:
    """Every byte the gateway and its engines keep in STATE_DIR (the WAL and SHM included)."""
    return b"".join(p.read_bytes() for p in sorted(state_dir.rglob("*")) if p.is_file())


def test_a_session_survives_a_restart_until_it_is_deleted(
    gateways: Gateways, state_dir: Path
) -> None:
    gateway = gateways.start(SESSION_TIMEOUT_SECONDS=600)
    session = create_session(gateway, tutor_id=3)
    with open_ws(gateway, session) as ws:
        assert "This is turn 1," in say(ws, "first turn")["content"]
        assert engine_environ(gateway)["ENGINE_HISTORY_URL"] == (
            f"sqlite:///{state_dir.resolve()}/history.db"
        )
        assert engine_environ(gateway)["ENGINE_SESSION_TTL_SECONDS"] == "660.0"
    stop_cleanly(gateway)
    token = session["engine_token"].encode()
    assert (state_dir / "sessions.db").is_file()
    assert token not in state_bytes(state_dir), "the token is never stored"
    assert hash_token(session["engine_token"]).encode() in state_bytes(state_dir), "its hash is"

    again = gateways.start(SESSION_TIMEOUT_SECONDS=600)
    restored = get(again, session).json()
    assert {k: restored[k] for k in ("tutor_id", "student_id", "kb_id", "status")} == {
        "tutor_id": 3,
        "student_id": 7,
        "kb_id": None,
        "status": "active",
    }
    assert restored["created_at"] <= restored["last_activity"]
    listed = httpx.get(f"{again.http}/v1/sessions", timeout=10).json()
    assert [s["session_id"] for s in listed["sessions"]] == [session["session_id"]]
    with open_ws(again, session) as ws:
        reply = say(ws, "after the restart")
    assert reply["type"] == "text" and "Tutor 3 heard" in reply["content"]
    assert "This is turn 2," in reply["content"], "the conversation survived too (history.db)"
    deleted = httpx.delete(f"{again.http}/v1/sessions/{session['session_id']}", timeout=10)
    assert deleted.status_code == 204
    stop_cleanly(again)
    assert token not in state_bytes(state_dir)

    third = gateways.start(SESSION_TIMEOUT_SECONDS=600)
    assert get(third, session).status_code == 404
    assert httpx.get(f"{third.http}/v1/sessions", timeout=10).json()["total"] == 0
    assert close_code(third, session) == 4410, "it ended through DELETE, as before the restart"


def test_max_sessions_counts_the_sessions_of_before_a_restart(gateways: Gateways) -> None:
    gateway = gateways.start(MAX_SESSIONS=2)
    first, _ = create_session(gateway), create_session(gateway)
    gateway.process.kill()  # even a crash loses no session
    gateway.process.wait(timeout=10)

    again = gateways.start(MAX_SESSIONS=2)
    full = httpx.post(f"{again.http}/v1/sessions", json={"tutor_id": 1, "student_id": 1})
    assert full.status_code == 503 and "(2)" in full.json()["detail"]
    assert httpx.get(f"{again.http}/health").json()["active_sessions"] == 2
    httpx.delete(f"{again.http}/v1/sessions/{first['session_id']}").raise_for_status()
    create_session(again)


def test_idle_time_while_no_gateway_runs_counts_toward_expiry(gateways: Gateways) -> None:
    timeout = 2.0
    gateway = gateways.start(SESSION_TIMEOUT_SECONDS=timeout, REAPER_INTERVAL_SECONDS=0.2)
    session = create_session(gateway)
    with open_ws(gateway, session) as ws:
        say(ws, "hello")
    stop_cleanly(gateway)
    time.sleep(timeout + 0.2)  # idle past its timeout, with no gateway to expire it

    again = gateways.start(SESSION_TIMEOUT_SECONDS=timeout, REAPER_INTERVAL_SECONDS=0.2)
    assert get(again, session).status_code == 404, "expired by the sweep at startup"
    assert close_code(again, session) == 4408


def test_a_restored_session_expires_after_its_timeout_of_inactivity(
    gateways: Gateways,
) -> None:
    gateway = gateways.start(SESSION_TIMEOUT_SECONDS=30)
    session = create_session(gateway)
    stop_cleanly(gateway)

    again = gateways.start(SESSION_TIMEOUT_SECONDS=4, REAPER_INTERVAL_SECONDS=0.2)
    wait_for(lambda: get(again, session).status_code == 404, 60, "restored session expired")
    assert close_code(again, session) == 4408


def test_a_corrupt_session_database_stops_the_gateway_with_its_name(
    gateways: Gateways, state_dir: Path
) -> None:
    state_dir.mkdir()
    path = state_dir / "sessions.db"
    path.write_bytes(os.urandom(8192))
    gateway = gateways.launch()
    assert gateway.process.wait(timeout=60) != 0
    assert f"cannot use the session database {path}" in gateway.log()
