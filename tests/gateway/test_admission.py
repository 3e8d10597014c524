"""Admission and rate limits against a real local-mode gateway and real engine processes:
sessions per student, per tutor and in all, concurrent cold starts, client messages per
second per session, REST requests per key or client (README, "Limits and abuse")."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shlex
import sys
import time
from typing import Any

import httpx
import pytest

from .helpers import create_session, open_ws, recv, say

TOO_MANY_MESSAGES = "Too many messages: "


def post_session(gateway, tutor_id: int, student_id: int) -> httpx.Response:
    return httpx.post(
        f"{gateway.http}/v1/sessions", json={"tutor_id": tutor_id, "student_id": student_id}
    )


def limited(gateway, limit: str) -> float:
    """The gateway's tutor_gateway_limited_total for one limit."""
    text = httpx.get(f"{gateway.http}/metrics").text
    found = re.search(rf'^tutor_gateway_limited_total{{limit="{limit}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


# -- sessions ----------------------------------------------------------------------------------


def test_a_student_past_max_sessions_per_student_gets_429_with_retry_after(
    gateway_factory,
) -> None:
    gateway = gateway_factory(max_sessions_per_student=2, admission_retry_after_seconds=17)
    first = create_session(gateway, tutor_id=1, student_id=5)
    create_session(gateway, tutor_id=2, student_id=5)
    refused = post_session(gateway, tutor_id=3, student_id=5)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "17"
    detail = refused.json()["detail"]
    assert "student 5" in detail and "MAX_SESSIONS_PER_STUDENT" in detail
    assert post_session(gateway, tutor_id=3, student_id=6).status_code == 201, "others go on"
    assert limited(gateway, "max_sessions_per_student") == 1
    # Ending one of the student's sessions makes room again.
    assert httpx.delete(f"{gateway.http}/v1/sessions/{first['session_id']}").status_code == 204
    assert post_session(gateway, tutor_id=3, student_id=5).status_code == 201


def test_a_tutor_past_max_sessions_per_tutor_gets_429_with_retry_after(gateway_factory) -> None:
    gateway = gateway_factory(max_sessions_per_tutor=2)
    for student in (1, 2):
        create_session(gateway, tutor_id=9, student_id=student)
    refused = httpx.post(f"{gateway.http}/mgmt/v1/sessions", json={"tutor_id": 9, "student_id": 3})
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "30"
    assert "tutor 9" in refused.json()["detail"]
    assert "MAX_SESSIONS_PER_TUTOR" in refused.json()["detail"]
    assert post_session(gateway, tutor_id=10, student_id=3).status_code == 201
    assert limited(gateway, "max_sessions_per_tutor") == 1


def test_max_sessions_keeps_the_seeds_503_and_adds_retry_after(gateway_factory) -> None:
    gateway = gateway_factory(max_sessions=2, admission_retry_after_seconds=45)
    create_session(gateway, tutor_id=1, student_id=1)
    create_session(gateway, tutor_id=2, student_id=2)
    refused = post_session(gateway, tutor_id=3, student_id=3)
    assert refused.status_code == 503
    assert refused.json() == {"detail": "Maximum number of sessions reached (2)"}
    assert refused.headers["Retry-After"] == "45"
    assert limited(gateway, "max_sessions") == 1
    metrics = httpx.get(f"{gateway.http}/metrics").text
    assert "tutor_gateway_sessions_rejected_total 1.0" in metrics


# -- cold starts (local mode) ------------------------------------------------------------------


def test_cold_starts_past_the_limit_wait_their_turn(gateway_factory, caplog) -> None:
    # Each engine takes a second before it even starts Python: unbounded, the three would
    # overlap; with the limit 1 each start ends (ready) before the next one begins.
    slow_engine = f"sh -c 'sleep 1; exec {shlex.quote(sys.executable)} -m tutor_engine \"$@\"' sh"
    caplog.set_level(logging.INFO, logger="tutor_gateway.engines")
    gateway = gateway_factory(max_concurrent_cold_starts=1, engine_command=slow_engine)
    tutors = (21, 22, 23)
    sessions = [create_session(gateway, tutor_id=t, student_id=t) for t in tutors]
    with contextlib.ExitStack() as stack:
        # Each connection starts its engine at once.
        sockets = [stack.enter_context(open_ws(gateway, s)) for s in sessions]
        for ws in sockets:
            ws.send(json.dumps({"type": "text", "content": "hello"}))
        for tutor, ws in zip(tutors, sockets, strict=True):
            reply = recv(ws, timeout=120)
            assert reply["type"] == "text" and f"Tutor {tutor} heard: hello" in reply["content"]
    events = []
    for record in caplog.records:
        message = record.getMessage()
        if found := re.match(r"started engine for tutor (\d+)", message):
            events.append(("started", int(found.group(1))))
        elif found := re.match(r"engine for tutor (\d+) is ready", message):
            events.append(("ready", int(found.group(1))))
    order = [tutor for kind, tutor in events if kind == "started"]
    assert sorted(order) == list(tutors)
    assert events == [(kind, t) for t in order for kind in ("started", "ready")], events
    waits = [r for r in caplog.records if "MAX_CONCURRENT_COLD_STARTS" in r.getMessage()]
    assert waits, "the starts that waited said so"


# -- client messages per second ----------------------------------------------------------------


def collect(ws, count: int) -> list[dict[str, Any]]:
    return [recv(ws, timeout=60) for _ in range(count)]


def test_messages_past_the_rate_get_an_error_and_the_connection_stays(gateway_factory) -> None:
    # A burst of 2, then one message every 10 s, for the session across its connections.
    gateway = gateway_factory(max_messages_per_second=0.1, max_messages_burst=2)
    session = create_session(gateway, tutor_id=4)
    with open_ws(gateway, session) as ws, open_ws(gateway, session) as other:
        for text in ("one", "two", "three"):
            ws.send(json.dumps({"type": "text", "content": text}))
        got = [recv(ws, timeout=60)]
        while got[-1]["type"] != "error":  # "three" was refused: the bucket is empty
            got.append(recv(ws, timeout=60))
        # Only now: the two sockets' frames have no order between them.
        other.send(json.dumps({"type": "text", "content": "four"}))  # the same session's bucket
        refused = recv(other)
        assert refused["type"] == "error" and refused["content"].startswith(TOO_MANY_MESSAGES)
        assert "MAX_MESSAGES_PER_SECOND" in refused["content"]
        got += collect(ws, 3 - len(got))
        errors = [m["content"] for m in got if m["type"] == "error"]
        replies = [m["content"] for m in got if m["type"] == "text"]
        assert len(errors) == 1 and errors[0].startswith(TOO_MANY_MESSAGES)
        assert any("heard: one" in r for r in replies) and any("heard: two" in r for r in replies)
        # The connection is kept: once the bucket has room, messages go through again.
        deadline = time.monotonic() + 60
        while True:
            reply = say(ws, "five")
            if reply["type"] == "text":
                assert "heard: five" in reply["content"]
                break
            assert reply["content"].startswith(TOO_MANY_MESSAGES), reply
            assert time.monotonic() < deadline, "the bucket never drained"
            time.sleep(0.5)
    assert limited(gateway, "max_messages_per_second") >= 2


# -- REST requests per minute ------------------------------------------------------------------


def test_rest_requests_past_the_rate_get_429_with_retry_after(gateway_factory) -> None:
    gateway = gateway_factory(max_requests_per_minute=5)
    for _ in range(5):
        assert httpx.get(f"{gateway.http}/v1/sessions").status_code == 200
    refused = httpx.get(f"{gateway.http}/mgmt/v1/sessions")  # both prefixes share the budget
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "12"  # one request frees every 60 / 5 s
    assert "MAX_REQUESTS_PER_MINUTE" in refused.json()["detail"]
    assert post_session(gateway, tutor_id=1, student_id=1).status_code == 429
    # Health, readiness and metrics are not the management API: never limited.
    for path in ("/health", "/healthz", "/readyz"):
        assert httpx.get(f"{gateway.http}{path}").status_code == 200
    assert limited(gateway, "max_requests_per_minute") == 2


def test_with_api_keys_each_key_has_its_own_budget(gateway_factory) -> None:
    gateway = gateway_factory(max_requests_per_minute=3, management_api_keys="key-a,key-b")

    def get(key: str) -> httpx.Response:
        return httpx.get(f"{gateway.http}/v1/sessions", headers={"Authorization": f"Bearer {key}"})

    assert [get("key-a").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert get("key-b").status_code == 200, "another key is counted apart"
    assert get("wrong").status_code == 401, "refused by the key check before it is counted"
    assert [get("key-b").status_code for _ in range(3)] == [200, 200, 429]


@pytest.mark.parametrize("setting", ["max_messages_burst", "max_requests_per_minute"])
def test_limits_must_be_positive(gateway_factory, setting: str) -> None:
    with pytest.raises(ValueError):
        gateway_factory(**{setting: 0})
