"""Conversation history, kept in a store shared by a tutor's engines (see ``base``).

``open_store`` picks the implementation from ``ENGINE_HISTORY_URL``: ``sqlite:///<path>``
(``sqlite:////abs/path.db``), ``redis://`` or ``rediss://`` (Redis or Valkey), ``memory://``.
"""

from __future__ import annotations

import logging

from ..config import EngineSettings
from .base import HistoryStore, redacted
from .guarded import GuardedHistory, HistoryUnavailable
from .memory import MemoryStore

log = logging.getLogger("tutor_engine.history")

__all__ = ["GuardedHistory", "HistoryStore", "HistoryUnavailable", "open_store"]


def open_store(settings: EngineSettings) -> HistoryStore:
    """The store ``settings.history_url`` names (connections open on first use)."""
    url = settings.history_url
    limits = (settings.max_history_messages, settings.session_ttl_seconds)
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteStore

        path = url.removeprefix("sqlite:///")
        log.info("conversation history in SQLite at %s", path)
        return SqliteStore(path, *limits, busy_timeout_seconds=settings.history_timeout_seconds)
    if url.startswith(("redis://", "rediss://")):
        from .redis import RedisStore, connect

        log.info("conversation history in Redis at %s", redacted(url))
        password = settings.history_password.get_secret_value()
        return RedisStore(connect(url, password, settings.history_timeout_seconds), *limits)
    if url.startswith("memory://"):
        log.warning(
            "conversation history in this process's memory (ENGINE_HISTORY_URL=memory://): "
            "it dies with the process and no other engine can continue these sessions"
        )
        return MemoryStore(*limits)
    raise ValueError(
        "ENGINE_HISTORY_URL must start with sqlite:///, redis://, rediss:// or memory://"
    )
