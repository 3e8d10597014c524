"""History in Redis (or Valkey): one list per session, a tombstone key per ended session.

Keys share the hash tag ``{session_id}``, so a session's two keys sit in one slot. Appends are
a Lua script (atomic: tombstone check, push, trim, expire); ``end`` deletes and sets the
tombstone in one MULTI; Redis expires both keys by itself (PEXPIRE).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..backends.base import ChatMessage
from .base import decode_message, encode_message

KEY_PREFIX = "tutor:"

# KEYS: history, tombstone. ARGV: max messages, TTL in ms, then the encoded messages.
APPEND = """
if redis.call('EXISTS', KEYS[2]) == 1 then
    return 0
end
local keep = tonumber(ARGV[1])
if keep <= 0 then
    redis.call('DEL', KEYS[1])
    return 1
end
for i = 3, #ARGV do
    redis.call('RPUSH', KEYS[1], ARGV[i])
end
redis.call('LTRIM', KEYS[1], -keep, -1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


def history_key(session_id: str) -> str:
    """The list holding a session's messages, oldest first."""
    return f"{KEY_PREFIX}{{{session_id}}}:history"


def tombstone_key(session_id: str) -> str:
    """The key that exists while an ended session's writes are refused."""
    return f"{KEY_PREFIX}{{{session_id}}}:ended"


class RedisStore:
    """The store's contract on a ``redis.asyncio`` client (which this store then owns)."""

    name = "redis"

    def __init__(self, client: Any, max_messages: int, ttl_seconds: float) -> None:
        self.client = client
        self._max = max_messages
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._append = client.register_script(APPEND)

    async def load(self, session_id: str) -> list[ChatMessage] | None:
        async with self.client.pipeline(transaction=True) as tx:
            tx.exists(tombstone_key(session_id))
            tx.lrange(history_key(session_id), 0, -1)
            ended, items = await tx.execute()
        return None if ended else [decode_message(item) for item in items]

    async def append(self, session_id: str, messages: Sequence[ChatMessage]) -> bool:
        keys = [history_key(session_id), tombstone_key(session_id)]
        args = [self._max, self._ttl_ms, *(encode_message(m) for m in messages)]
        return bool(await self._append(keys=keys, args=args))

    async def end(self, session_id: str) -> None:
        async with self.client.pipeline(transaction=True) as tx:
            tx.delete(history_key(session_id))
            tx.set(tombstone_key(session_id), 1, px=self._ttl_ms)
            await tx.execute()

    async def purge(self) -> int:
        return 0  # Redis expires keys by itself

    async def close(self) -> None:
        await self.client.aclose()


def connect(url: str, password: str, timeout_seconds: float) -> Any:
    """A ``redis.asyncio`` client for ``url``; ``password`` is used if the URL has none."""
    import redis.asyncio

    return redis.asyncio.from_url(
        url,
        password=password or None,  # a password in the URL wins
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
    )
