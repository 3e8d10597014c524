"""The history store's interface and the pure rules every implementation shares.

A store holds each session's conversation (user and assistant messages, oldest first), keyed
by session id and shared by every engine of a tutor, so any of them can continue any session:

- ``append`` adds a turn's messages, keeps the newest ``max_messages`` and refreshes the
  session's TTL; it writes nothing (and returns False) once the session has ended;
- ``end`` deletes the session's history and leaves a tombstone for the TTL, so a reply still
  finishing on any engine cannot write it again; the check and the write are one atomic step;
- everything expires ``ttl_seconds`` after its last write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from ..backends.base import ChatMessage


class HistoryStore(Protocol):
    """Where conversation history lives (SQLite, Redis, or this process's memory)."""

    name: str

    async def load(self, session_id: str) -> list[ChatMessage] | None:
        """The session's messages, oldest first; ``None`` if the session has ended."""

    async def append(self, session_id: str, messages: Sequence[ChatMessage]) -> bool:
        """Add messages and refresh the TTL; False, writing nothing, if the session ended."""

    async def end(self, session_id: str) -> None:
        """Delete the session's history and block later appends for the TTL."""

    async def purge(self) -> int:
        """Remove expired entries the store does not expire by itself; how many."""

    async def close(self) -> None:
        """Release connections and threads."""


def trimmed(messages: Sequence[ChatMessage], max_messages: int) -> list[ChatMessage]:
    """The newest ``max_messages`` messages (none if it is 0)."""
    return list(messages[-max_messages:]) if max_messages > 0 else []


def encode_message(message: ChatMessage) -> str:
    """One message as compact JSON."""
    return json.dumps({"role": message.role, "content": message.content}, separators=(",", ":"))


def decode_message(text: str | bytes) -> ChatMessage:
    """A message written by ``encode_message``."""
    return _message(json.loads(text))


def encode_messages(messages: Sequence[ChatMessage]) -> str:
    """Messages as a JSON array."""
    return "[" + ",".join(encode_message(m) for m in messages) + "]"


def decode_messages(text: str | bytes) -> list[ChatMessage]:
    """Messages written by ``encode_messages``."""
    return [_message(item) for item in json.loads(text)]


def _message(data: dict[str, str]) -> ChatMessage:
    role = data["role"]
    if role not in ("user", "assistant"):
        raise ValueError(f"unexpected role in stored history: {role[:20]!r}")
    return ChatMessage(role, str(data["content"]))  # type: ignore[arg-type]


def redacted(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe to log)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
