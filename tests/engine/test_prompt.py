"""Prompt assembly: persona, passages, and history trimmed to a token budget."""

from __future__ import annotations

import pytest
from tutor_engine.backends.base import ChatMessage
from tutor_engine.prompt import (
    MESSAGE_OVERHEAD_TOKENS,
    build_prompt,
    estimate_tokens,
    system_prompt,
    trim_history,
)

pytestmark = pytest.mark.unit


def turns(n: int, words: int = 10) -> list[ChatMessage]:
    out = []
    for i in range(n):
        out.append(ChatMessage("user", f"question {i} " + "word " * words))
        out.append(ChatMessage("assistant", f"answer {i} " + "word " * words))
    return out


def test_token_estimate_counts_english_and_cjk() -> None:
    assert estimate_tokens("") == MESSAGE_OVERHEAD_TOKENS
    assert estimate_tokens("a" * 40) == 10 + MESSAGE_OVERHEAD_TOKENS
    assert estimate_tokens("你好" * 10) == 20 + MESSAGE_OVERHEAD_TOKENS
    # Accented Latin counts as English; only CJK and later scripts count per character.
    assert estimate_tokens("é" * 40) == 10 + MESSAGE_OVERHEAD_TOKENS
    assert estimate_tokens("ab 你好 é 😀" * 4) == 12 + MESSAGE_OVERHEAD_TOKENS  # 3 wide each


def test_trim_keeps_the_newest_messages_that_fit() -> None:
    history = turns(10)
    kept = trim_history(
        history, budget_tokens=sum(estimate_tokens(m.content) for m in history[-4:])
    )
    assert kept == history[-4:]


def test_trim_never_starts_with_an_assistant_message() -> None:
    history = turns(3)
    kept = trim_history(
        history, budget_tokens=sum(estimate_tokens(m.content) for m in history[-3:])
    )
    assert kept[0].role == "user"
    assert kept == history[-2:]


def test_everything_fits_in_a_large_budget_and_nothing_in_zero() -> None:
    history = turns(3)
    assert trim_history(history, 10_000) == history
    assert trim_history(history, 0) == []


def test_prompt_has_persona_passages_history_and_question() -> None:
    history = turns(2)
    prompt = build_prompt(
        "You are Ada.",
        history,
        "What is a loop?",
        passages=["Loops repeat code.", "A for loop walks a sequence."],
        context_tokens=4096,
        reply_tokens=512,
    )
    assert prompt[0].role == "system"
    assert prompt[0].content.startswith("You are Ada.")
    assert "[1] Loops repeat code." in prompt[0].content
    assert "[2] A for loop walks a sequence." in prompt[0].content
    assert prompt[1:-1] == history
    assert prompt[-1] == ChatMessage("user", "What is a loop?")


def test_the_history_gets_what_the_context_leaves() -> None:
    history = turns(50, words=40)
    context, reply = 1024, 256
    prompt = build_prompt(
        "You are Ada.", history, "Next?", context_tokens=context, reply_tokens=reply
    )
    assert sum(estimate_tokens(m.content) for m in prompt) <= context - reply
    assert prompt[1:-1] == history[-len(prompt[1:-1]) :]
    assert len(prompt) > 2


def test_no_passages_means_the_bare_persona() -> None:
    assert system_prompt("You are Ada.", []) == "You are Ada."
