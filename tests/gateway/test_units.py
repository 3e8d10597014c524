"""Pure pieces of the gateway: policy decisions, tokens, log redaction, settings, the store."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest
from tutor_contract.logs import RedactTokens, redact
from tutor_gateway.config import GatewaySettings
from tutor_gateway.local.store import SqliteSessionStore
from tutor_gateway.policy import expired_sessions, has_capacity, idle_engines
from tutor_gateway.sessions import CapacityError
from tutor_gateway.tokens import hash_token, mint_token, token_matches

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("last", "now", "timeout", "expired"),
    [(0, 9, 10, False), (0, 10, 10, True), (5, 100, 3600, False), (0, 3600, 3600, True)],
)
def test_expiry(last: float, now: float, timeout: float, expired: bool) -> None:
    assert expired_sessions({"s": last}, now, timeout) == (["s"] if expired else [])


@pytest.mark.parametrize(
    ("active", "maximum", "fits"), [(0, 1, True), (9, 10, True), (10, 10, False)]
)
def test_capacity(active: int, maximum: int, fits: bool) -> None:
    assert has_capacity(active, maximum) is fits


def test_idle_engines_start_their_clock_then_stop_after_the_timeout() -> None:
    first = idle_engines([1, 2], {}, busy_tutors={2}, now=100, idle_timeout=30)
    assert first.stop == [] and first.idle_since == {1: 100}
    later = idle_engines([1, 2], first.idle_since, busy_tutors={2}, now=129, idle_timeout=30)
    assert later.stop == [] and later.idle_since == {1: 100}
    due = idle_engines([1, 2], later.idle_since, busy_tutors={2}, now=130, idle_timeout=30)
    assert due.stop == [1] and due.idle_since == {}


def test_a_busy_engine_resets_its_idle_clock() -> None:
    decision = idle_engines([1], {1: 0}, busy_tutors={1}, now=1000, idle_timeout=30)
    assert decision.stop == [] and decision.idle_since == {}


def test_tokens_are_random_and_checked_by_hash() -> None:
    token, other = mint_token(), mint_token()
    assert token != other and len(token) >= 43
    digest = hash_token(token)
    assert len(digest) == 64 and token not in digest
    assert token_matches(token, digest)
    assert not token_matches(other, digest)
    assert not token_matches(None, digest) and not token_matches("", digest)


def test_redaction_hides_tokens_in_urls_and_log_records() -> None:
    assert redact("GET /ws/ws/abc?token=s3cr3t&x=1") == "GET /ws/ws/abc?token=[REDACTED]&x=1"
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, '"WebSocket %s"', ("/ws?token=abc",), None
    )
    RedactTokens().filter(record)
    assert record.getMessage() == '"WebSocket /ws?token=[REDACTED]"'


def test_settings_read_the_seeds_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANAGEMENT_API_PORT", "9500")
    monkeypatch.setenv("MAX_SESSIONS", "25")
    monkeypatch.setenv("SESSION_TIMEOUT_SECONDS", "60")
    monkeypatch.setenv("WEBSOCKET_URL", "wss://tutor.example.edu/ws")
    monkeypatch.setenv("ENGINE_API_KEY", "k")
    settings = GatewaySettings(_env_file=None)
    assert (settings.management_api_port, settings.max_sessions) == (9500, 25)
    assert settings.session_timeout_seconds == 60 and settings.engine_api_key == "k"
    assert settings.engine_url("id") == "wss://tutor.example.edu/ws/ws/id"


def test_settings_read_a_dotenv_file(tmp_path) -> None:
    env = tmp_path / ".env"
    env.write_text("MAX_SESSIONS=3\nMANAGEMENT_API_PORT=9001\n")
    settings = GatewaySettings(_env_file=env)
    assert settings.max_sessions == 3 and settings.websocket_url == "ws://localhost:9001/ws"


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="max_sessions"):
        GatewaySettings(_env_file=None, max_sessions=0)


def test_store_enforces_capacity_and_remembers_why_sessions_ended(tmp_path) -> None:
    async def scenario() -> None:
        clock = itertools.count().__next__
        store = await SqliteSessionStore.open(
            tmp_path / "sessions.db", max_sessions=2, clock=lambda: float(clock())
        )
        removed = []

        async def listener(session, reason) -> None:
            removed.append((session.session_id, reason))

        store.add_removal_listener(listener)
        first = await store.create(1, 1, None, "h" * 64)
        second = await store.create(1, 2, "kb", "h" * 64)
        with pytest.raises(CapacityError, match=r"\(2\)"):
            await store.create(1, 3, None, "h" * 64)
        before = (await store.get(first.session_id)).last_activity
        await store.touch(first.session_id)
        assert (await store.get(first.session_id)).last_activity > before
        await store.delete(first.session_id, "expired")
        await store.delete(second.session_id)
        assert removed == [(first.session_id, "expired"), (second.session_id, "deleted")]
        assert store.ended_reason(first.session_id) == "expired"
        assert store.ended_reason("unknown") is None
        assert await store.count() == 0
        await store.close()

    asyncio.run(scenario())
