"""The relay's pure pieces: which frames are admitted, the byte-bounded inbox, takeover, death."""

from __future__ import annotations

import asyncio

import pytest
from tutor_gateway.inbox import FrameInbox
from tutor_gateway.policy import engine_is_dead
from tutor_gateway.relay import admit_frame
from tutor_gateway.service import Connections

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "data", "admitted", "problem"),
    [
        ('{"a": 1}', None, b'{"a": 1}', None),
        ("é" * 5, None, "é".encode() * 5, None),
        ("é" * 6, None, b"", "Message too large: 12 bytes (limit 10)"),
        ("x" * 11, None, b"", "Message too large: over 10 bytes (limit 10)"),
        ("bad \udcff", None, b"", "Text frames must be valid UTF-8"),
        (None, b"\x00" * 10, b"\x00" * 10, None),
        (None, b"\x00" * 11, b"", "Message too large: 11 bytes (limit 10)"),
        (None, None, b"", None),
    ],
)
def test_admit_frame(text, data, admitted, problem) -> None:
    assert admit_frame(text, data, 10) == (admitted, problem)


async def test_the_inbox_is_bounded_in_bytes_and_keeps_order() -> None:
    inbox = FrameInbox(max_bytes=10)
    await inbox.put(b"123456", True)
    blocked = asyncio.create_task(inbox.put(b"12345", False))
    await asyncio.sleep(0)
    assert not blocked.done() and inbox.queued_bytes == 6
    assert await inbox.get() == (b"123456", True)
    await asyncio.wait_for(blocked, 5)
    assert inbox.queued_bytes == 5
    assert await inbox.get() == (b"12345", False)


async def test_a_frame_larger_than_the_budget_passes_alone() -> None:
    inbox = FrameInbox(max_bytes=4)
    await asyncio.wait_for(inbox.put(b"123456789", True), 5)
    assert inbox.queued_bytes == 9
    inbox.clear()
    assert inbox.queued_bytes == 0


def test_connections_past_the_limit_displace_the_oldest() -> None:
    connections = Connections(per_session=2)
    a, b, c = object(), object(), object()
    assert connections.add("s", a) == []  # type: ignore[arg-type]
    assert connections.add("s", b) == []  # type: ignore[arg-type]
    assert connections.add("s", c) == [a]  # type: ignore[arg-type]
    connections.remove("s", a)  # type: ignore[arg-type]
    assert len(connections) == 2
    assert connections.add("other", a) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("alive", "failing_since", "now", "dead"),
    [
        (False, None, 0.0, True),
        (True, None, 100.0, False),
        (True, 10.0, 39.9, False),
        (True, 10.0, 40.0, True),
    ],
)
def test_an_engine_is_dead_when_gone_or_failing_for_the_liveness_timeout(
    alive, failing_since, now, dead
) -> None:
    assert engine_is_dead(alive, failing_since, now, liveness_timeout=30.0) is dead
