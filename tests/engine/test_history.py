"""Conversation history: bounded, expired when idle, never re-created once its session ended."""

from __future__ import annotations

from tutor_engine.backends import ChatMessage
from tutor_engine.history import ConversationStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_history_is_bounded_and_expires() -> None:
    clock = Clock()
    store = ConversationStore(max_messages=3, ttl_seconds=60, clock=clock)
    store.append("s", *(ChatMessage("user", str(i)) for i in range(5)))
    assert [m.content for m in store.history("s")] == ["2", "3", "4"]
    clock.now += 61
    assert store.expire() == ["s"]
    assert store.history("s") == []


def test_an_ended_session_gets_no_history_back_from_a_late_reply() -> None:
    clock = Clock()
    store = ConversationStore(max_messages=10, ttl_seconds=60, clock=clock)
    store.append("s", ChatMessage("user", "hi"))
    assert store.end("s") is True
    store.append("s", ChatMessage("user", "hi"), ChatMessage("assistant", "late reply"))
    assert store.history("s") == [] and len(store) == 0 and store.ended("s")
    store.append("other", ChatMessage("user", "unaffected"))
    assert len(store.history("other")) == 1
    # The memory of ended sessions is bounded in time...
    clock.now += 61
    store.expire()
    assert not store.ended("s")


def test_the_memory_of_ended_sessions_is_bounded_in_size() -> None:
    store = ConversationStore(max_messages=10, ttl_seconds=60, max_ended=3)
    for i in range(10):
        store.end(f"s{i}")
    assert sum(store.ended(f"s{i}") for i in range(10)) == 3
    assert store.ended("s9")
