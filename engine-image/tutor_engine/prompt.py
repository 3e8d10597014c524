"""Prompt assembly: persona, retrieved passages, history trimmed to a token budget, the question."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .backends.base import ChatMessage

# Chat templates add a few tokens of framing per message.
MESSAGE_OVERHEAD_TOKENS = 4
# CJK and later scripts: close to one token per character.
_WIDE = re.compile("[\u2e80-\U0010ffff]")


def estimate_tokens(text: str) -> int:
    """A conservative token count without the model's tokenizer.

    English BPE vocabularies average ~4 characters per token; CJK text is close to one token
    per character. Taking the larger of the two estimates errs on the side of a shorter prompt.
    """
    wide = 0 if text.isascii() else len(_WIDE.findall(text))
    return max((len(text) + 3) // 4, wide) + MESSAGE_OVERHEAD_TOKENS


def trim_history(history: Sequence[ChatMessage], budget_tokens: int) -> list[ChatMessage]:
    """The newest messages that fit in ``budget_tokens``, starting with a user message."""
    kept: list[ChatMessage] = []
    used = 0
    for message in reversed(history):
        used += estimate_tokens(message.content)
        if used > budget_tokens:
            break
        kept.append(message)
    kept.reverse()
    while kept and kept[0].role != "user":
        kept.pop(0)
    return kept


def system_prompt(persona: str, passages: Sequence[str]) -> str:
    """The persona, followed by the knowledge-base passages to ground the answer in."""
    if not passages:
        return persona
    excerpts = "\n\n".join(f"[{i}] {p.strip()}" for i, p in enumerate(passages, 1))
    return (
        f"{persona}\n\n"
        "Answer using the course material below when it is relevant; say so when it does not "
        "cover the question. Course material:\n\n"
        f"{excerpts}"
    )


def build_prompt(
    persona: str,
    history: Sequence[ChatMessage],
    user_text: str,
    *,
    passages: Sequence[str] = (),
    context_tokens: int,
    reply_tokens: int,
) -> list[ChatMessage]:
    """System prompt (persona + passages), as much recent history as fits, then the question.

    The history gets what the context window leaves after the system prompt, the question and
    room for the reply; if even that is negative, no history is sent.
    """
    system = system_prompt(persona, passages)
    budget = context_tokens - reply_tokens - estimate_tokens(system) - estimate_tokens(user_text)
    return [
        ChatMessage("system", system),
        *trim_history(history, max(budget, 0)),
        ChatMessage("user", user_text),
    ]
