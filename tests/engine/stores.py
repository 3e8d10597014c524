"""History store kits for tests: each real store with ways to age it, break it and look inside.

A kit opens any number of store instances on the same data (as several engines would), makes
everything in it older (a moved clock for SQLite and memory; lowered key TTLs that Redis then
expires itself), takes the store down and back, and checks what is really stored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
from tutor_engine.history import HistoryStore
from tutor_engine.history.memory import MemoryStore
from tutor_engine.history.redis import RedisStore, connect, history_key
from tutor_engine.history.sqlite import SqliteStore

from ..support.redis_server import RedisServer


class Clock:
    """Wall-clock seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class StoreKit:
    """One store's data, any number of store instances on it, and tools to test it."""

    kind: str
    url: str  # ENGINE_HISTORY_URL of engines sharing this data ("" for memory)
    clock: Clock = field(default_factory=Clock)
    opened: list[HistoryStore] = field(default_factory=list)
    path: Path | None = None
    server: RedisServer | None = None
    shared: bool = True  # instances see each other's writes (not so in memory)

    def open(self, max_messages: int = 40, ttl_seconds: float = 60.0) -> HistoryStore:
        """A new store instance on this kit's data."""
        store: HistoryStore
        if self.kind == "memory":
            store = MemoryStore(max_messages, ttl_seconds, clock=self.clock)
        elif self.kind == "sqlite":
            assert self.path is not None
            store = SqliteStore(self.path, max_messages, ttl_seconds, clock=self.clock)
        else:
            store = RedisStore(connect(self.url, "", 2.0), max_messages, ttl_seconds)
        self.opened.append(store)
        return store

    def age(self, seconds: float) -> None:
        """Make everything stored ``seconds`` older (Redis: every key must have a TTL)."""
        if self.kind != "redis":
            self.clock.now += seconds
            return
        with self._redis() as client:
            for key in client.scan_iter("tutor:*"):
                left = client.pttl(key)
                assert left > 0, f"{key!r} has no TTL"
                client.pexpire(key, int(left - seconds * 1000))  # <= 0: Redis deletes it

    def has_history(self, session_id: str) -> bool:
        """Whether the store holds any history row or key for the session (ignoring expiry)."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.path) as db:
                row = db.execute(
                    "SELECT 1 FROM history_messages WHERE session_id = ?", (session_id,)
                ).fetchone()
            return row is not None
        assert self.kind == "redis"
        with self._redis() as client:
            return bool(client.exists(history_key(session_id)))

    @contextmanager
    def down(self) -> Iterator[None]:
        """The store is unreachable (Redis stopped; SQLite locked by another process) until
        the block ends; then it is back (Redis restarted empty on the same port)."""
        if self.kind == "redis":
            assert self.server is not None
            self.server.stop()
            try:
                yield
            finally:
                self.server.start()
            return
        assert self.kind == "sqlite" and self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        locker = sqlite3.connect(self.path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # writers wait for it, up to their busy timeout
        try:
            yield
        finally:
            locker.execute("ROLLBACK")
            locker.close()

    @contextmanager
    def _redis(self) -> Iterator[redis.Redis]:
        client = redis.Redis.from_url(self.url)
        try:
            yield client
        finally:
            client.close()

    async def close(self) -> None:
        for store in self.opened:
            await store.close()


def sqlite_kit(tmp_path: Path) -> StoreKit:
    path = tmp_path / "state" / "history.db"
    return StoreKit("sqlite", f"sqlite:///{path}", path=path)


def redis_kit(server: RedisServer) -> StoreKit:
    return StoreKit("redis", server.url, server=server)
