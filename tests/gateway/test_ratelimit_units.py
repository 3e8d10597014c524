"""Admission and rate-limit decisions as plain functions (tutor_gateway.admission, .ratelimit,
.kube.admission): session counts, cold starts in a cluster, leaky buckets, whom a request
counts against."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from tutor_gateway.admission import (
    EngineState,
    SessionLimits,
    cold_start_refusal,
    session_refusal,
    starting_tutors,
)
from tutor_gateway.config import GatewaySettings
from tutor_gateway.kube.admission import engine_states
from tutor_gateway.ratelimit import KeyedLimiter, client_key, message_rate_problem
from tutor_gateway.sessions import Session

pytestmark = pytest.mark.unit

LIMITS = SessionLimits(
    max_sessions=10, max_sessions_per_student=2, max_sessions_per_tutor=3, retry_after=30
)


def session(tutor: int, student: int, n: int = 0) -> Session:
    return Session(f"s-{tutor}-{student}-{n}", tutor, student, None, "h", "active", 0.0, 0.0)


# -- sessions per student, per tutor, in all ---------------------------------------------------


def test_a_session_fits_under_every_limit() -> None:
    live = [session(1, 1), session(2, 2)]
    assert session_refusal(live, tutor_id=1, student_id=1, limits=LIMITS) is None


def test_a_student_at_the_limit_is_refused_with_429_naming_it() -> None:
    live = [session(1, 7), session(2, 7)]
    refusal = session_refusal(live, tutor_id=3, student_id=7, limits=LIMITS)
    assert refusal is not None
    assert (refusal.status, refusal.limit, refusal.retry_after) == (
        429,
        "MAX_SESSIONS_PER_STUDENT",
        30,
    )
    assert "student 7" in refusal.detail and "MAX_SESSIONS_PER_STUDENT 2" in refusal.detail
    assert refusal.label == "max_sessions_per_student"
    assert session_refusal(live, tutor_id=3, student_id=8, limits=LIMITS) is None


def test_a_tutor_at_the_limit_is_refused_with_429_naming_it() -> None:
    live = [session(4, s) for s in (1, 2, 3)]
    refusal = session_refusal(live, tutor_id=4, student_id=9, limits=LIMITS)
    assert refusal is not None and (refusal.status, refusal.limit) == (
        429,
        "MAX_SESSIONS_PER_TUTOR",
    )
    assert "tutor 4" in refusal.detail
    assert session_refusal(live, tutor_id=5, student_id=9, limits=LIMITS) is None


def test_max_sessions_comes_first_with_the_seeds_503_and_text() -> None:
    live = [session(1, 1, n) for n in range(10)]  # also over both other limits
    refusal = session_refusal(live, tutor_id=1, student_id=1, limits=LIMITS)
    assert refusal is not None
    assert (refusal.status, refusal.limit) == (503, "MAX_SESSIONS")
    assert refusal.detail == "Maximum number of sessions reached (10)"


def test_max_sessions_per_tutor_defaults_to_max_sessions() -> None:
    settings = GatewaySettings(_env_file=None, max_sessions=7)  # type: ignore[call-arg]
    assert settings.max_sessions_per_tutor == 7
    assert settings.max_sessions_per_student == 3
    assert settings.max_concurrent_cold_starts == 2
    assert (settings.max_messages_per_second, settings.max_messages_burst) == (10, 20)
    assert settings.max_requests_per_minute == 600
    assert settings.admission_retry_after_seconds == 30


# -- cold starts (cluster mode) ----------------------------------------------------------------

READY = EngineState("Ready", ready=True)
IDLE = EngineState("Idle", ready=True)
PENDING = EngineState("Pending", ready=False)
SCALED_DOWN = EngineState("ScaledDown", ready=False)
FAILED = EngineState("Failed", ready=False)


def test_starting_tutors_are_pending_engines_and_cold_tutors_with_sessions() -> None:
    engines = {1: READY, 2: PENDING, 3: SCALED_DOWN, 4: FAILED, 5: IDLE, 6: SCALED_DOWN}
    # 2: pods coming; 3: scaled down but a session waits; 7: a session, no TutorEngine yet;
    # 4: failed (nothing is coming); 1 and 5: ready; 6: scaled down with no session.
    assert starting_tutors(engines, [1, 3, 4, 7, 7]) == {2, 3, 7}


def test_a_tutor_with_a_ready_engine_is_always_admitted() -> None:
    engines = {1: READY, 2: PENDING, 3: PENDING}
    assert cold_start_refusal(1, engines, [2, 3], limit=1, retry_after=30) is None


def test_a_tutor_already_starting_joins_its_start() -> None:
    engines = {2: PENDING, 3: PENDING}
    assert cold_start_refusal(2, engines, [], limit=1, retry_after=30) is None
    # No TutorEngine yet, but one of its sessions already waits: the same start.
    assert cold_start_refusal(9, engines, [9], limit=2, retry_after=30) is None


def test_a_new_cold_tutor_waits_while_the_limit_is_starting() -> None:
    engines = {2: PENDING, 3: SCALED_DOWN}
    refusal = cold_start_refusal(4, engines, [3], limit=2, retry_after=15)
    assert refusal is not None
    assert (refusal.status, refusal.limit, refusal.retry_after) == (
        429,
        "MAX_CONCURRENT_COLD_STARTS",
        15,
    )
    assert "2 under way" in refusal.detail and "tutor 4" in refusal.detail
    # Scaled down and no session waiting: not a start under way, so one slot is free.
    assert cold_start_refusal(4, engines, [], limit=2, retry_after=15) is None
    # Once tutor 2 is ready, tutor 4 may start.
    assert cold_start_refusal(4, {**engines, 2: READY}, [3], limit=2, retry_after=15) is None


def test_engine_states_read_tutor_engines() -> None:
    objects = {
        "tutor-1": {
            "spec": {"tutorId": 1},
            "status": {"phase": "Ready", "readyEndpoints": ["http://10.0.0.1:8000"]},
        },
        "tutor-2": {"spec": {"tutorId": 2}, "status": {"phase": "Pending"}},
        "tutor-3": {"spec": {"tutorId": 3}},  # not reconciled yet
        "broken": {"spec": {}},
    }
    assert engine_states(objects) == {
        1: EngineState("Ready", True),
        2: EngineState("Pending", False),
        3: EngineState(None, False),
    }


# -- leaky buckets -----------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_with_clock(clock: FakeTime, coro_fn):  # type: ignore[no-untyped-def]
    """Run ``coro_fn()`` on a fresh loop whose clock (what aiolimiter reads) is ``clock``."""
    loop = asyncio.new_event_loop()
    loop.time = clock  # type: ignore[method-assign]
    try:
        return loop.run_until_complete(coro_fn())
    finally:
        loop.close()


def test_a_bucket_takes_a_burst_then_the_rate() -> None:
    clock = FakeTime()
    limiter = KeyedLimiter(rate=2, burst=4)

    async def scenario() -> list[bool]:
        results = [await limiter.acquire("s") for _ in range(5)]  # 4 fit, the 5th does not
        clock.now += 0.5  # one unit drains
        results += [await limiter.acquire("s"), await limiter.acquire("s")]
        clock.now += 2.0  # a full bucket drains
        results += [await limiter.acquire("s") for _ in range(4)]
        return results

    assert run_with_clock(clock, scenario) == [
        *[True] * 4,
        False,
        True,
        False,
        *[True] * 4,
    ]


def test_buckets_are_per_key_and_refusals_are_not_counted() -> None:
    clock = FakeTime()
    limiter = KeyedLimiter(rate=1, burst=1)

    async def scenario() -> list[bool]:
        first = [await limiter.acquire("a"), await limiter.acquire("a"), await limiter.acquire("a")]
        other = [await limiter.acquire("b")]
        clock.now += 1.0  # refused tries did not fill "a" further: one second frees one
        return [*first, *other, await limiter.acquire("a")]

    assert run_with_clock(clock, scenario) == [True, False, False, True, True]


def test_the_number_of_buckets_is_bounded() -> None:
    clock = FakeTime()
    limiter = KeyedLimiter(rate=1, burst=1, max_keys=100)

    async def scenario() -> None:
        for n in range(1000):
            await limiter.acquire(f"key-{n}")

    run_with_clock(clock, scenario)
    assert len(limiter) <= 100


@pytest.mark.parametrize(("rate", "retry"), [(10.0, 1), (600 / 60, 1), (5 / 60, 12), (0.25, 4)])
def test_retry_after_is_the_time_one_unit_takes_to_drain(rate: float, retry: int) -> None:
    assert KeyedLimiter(rate=rate, burst=5).retry_after == retry


def test_a_limiter_needs_a_rate_and_a_burst() -> None:
    with pytest.raises(ValueError):
        KeyedLimiter(rate=0, burst=5)
    with pytest.raises(ValueError):
        KeyedLimiter(rate=1, burst=0)


def test_the_message_error_names_the_limit() -> None:
    text = message_rate_problem(10, 20)
    assert text.startswith("Too many messages: ")
    assert "10 per second" in text and "burst 20" in text and "MAX_MESSAGES_PER_SECOND" in text


# -- whom a REST request counts against --------------------------------------------------------


def scope(authorization: bytes | None = None, host: str = "10.1.2.3") -> dict:
    headers = [(b"host", b"gw")]
    if authorization is not None:
        headers.append((b"authorization", authorization))
    return {"type": "http", "headers": headers, "client": (host, 5555)}


def test_with_keys_a_request_counts_against_a_hash_of_its_key() -> None:
    key = client_key(scope(b"Bearer secret-key"), by_key=True)
    assert key == "key:" + hashlib.sha256(b"Bearer secret-key").hexdigest()[:32]
    assert "secret-key" not in key
    assert client_key(scope(b"Bearer secret-key", host="10.9.9.9"), by_key=True) == key
    assert client_key(scope(b"Bearer other"), by_key=True) != key


def test_without_keys_or_a_header_a_request_counts_against_its_address() -> None:
    assert client_key(scope(b"Bearer made-up"), by_key=False) == "ip:10.1.2.3"
    assert client_key(scope(None), by_key=True) == "ip:10.1.2.3"
    assert client_key({"type": "http", "headers": []}, by_key=False) == "ip:unknown"
