"""History in a SQLite file that several engine processes (and their restarts) share.

The standard library's ``sqlite3`` runs in one thread of its own (blocking calls never touch
the event loop); the database is in WAL mode with a busy timeout, so readers never wait for
a writer and writers of other processes take turns. Rows carry their expiry (wall-clock
seconds): expired rows are ignored at once and deleted by ``purge``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ..backends.base import ChatMessage
from .base import decode_messages, encode_messages, trimmed

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS history_messages (
    session_id TEXT PRIMARY KEY,
    messages TEXT NOT NULL,  -- JSON array of {"role", "content"}, oldest first
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS history_tombstones (
    session_id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
"""


class SqliteStore:
    """The store's contract in one SQLite file (``path``; its folder is created if missing)."""

    name = "sqlite"

    def __init__(
        self,
        path: str | Path,
        max_messages: int,
        ttl_seconds: float,
        busy_timeout_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._max = max_messages
        self._ttl = ttl_seconds
        self._busy_ms = max(1, int(busy_timeout_seconds * 1000))
        self._clock = clock
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tutor-history")
        self._db: sqlite3.Connection | None = None  # used by the executor's thread only

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: work(self._connection())
        )

    def _connection(self) -> sqlite3.Connection:
        """The thread's connection, opened (and the schema created) on first use."""
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=self._busy_ms / 1000, isolation_level=None)
            try:
                db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
                self._use_wal(db)
                db.execute("PRAGMA synchronous = NORMAL")
                db.executescript(SCHEMA)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _use_wal(self, db: sqlite3.Connection) -> None:
        """Put the file in WAL mode (a property of the file: the first connection sets it).

        Switching takes a lock SQLite's busy handler does not wait for, so a connection that
        opens a new file while another is switching it tries again until the busy timeout.
        """
        deadline = time.monotonic() + self._busy_ms / 1000
        while True:
            try:
                mode = db.execute("PRAGMA journal_mode").fetchone()[0]
                if mode != "wal":
                    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    raise sqlite3.OperationalError(f"journal mode {mode!r} instead of WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.01)

    @staticmethod
    @contextmanager
    def _transaction(db: sqlite3.Connection) -> Iterator[None]:
        """A write transaction: the write lock is taken at BEGIN, so check-then-write is atomic."""
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _ended(self, db: sqlite3.Connection, session_id: str, now: float) -> bool:
        row = db.execute(
            "SELECT 1 FROM history_tombstones WHERE session_id = ? AND expires_at > ?",
            (session_id, now),
        ).fetchone()
        return row is not None

    def _messages(self, db: sqlite3.Connection, session_id: str, now: float) -> list[ChatMessage]:
        row = db.execute(
            "SELECT messages FROM history_messages WHERE session_id = ? AND expires_at > ?",
            (session_id, now),
        ).fetchone()
        return decode_messages(row[0]) if row else []

    async def load(self, session_id: str) -> list[ChatMessage] | None:
        def load(db: sqlite3.Connection) -> list[ChatMessage] | None:
            now = self._clock()
            db.execute("BEGIN")  # one snapshot for both reads
            try:
                if self._ended(db, session_id, now):
                    return None
                return self._messages(db, session_id, now)
            finally:
                db.execute("COMMIT")

        return await self._run(load)

    async def append(self, session_id: str, messages: Sequence[ChatMessage]) -> bool:
        def append(db: sqlite3.Connection) -> bool:
            with self._transaction(db):
                now = self._clock()
                if self._ended(db, session_id, now):
                    return False
                kept = trimmed([*self._messages(db, session_id, now), *messages], self._max)
                db.execute(
                    "INSERT INTO history_messages (session_id, messages, expires_at) "
                    "VALUES (?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET "
                    "messages = excluded.messages, expires_at = excluded.expires_at",
                    (session_id, encode_messages(kept), now + self._ttl),
                )
            return True

        return await self._run(append)

    async def end(self, session_id: str) -> None:
        def end(db: sqlite3.Connection) -> None:
            with self._transaction(db):
                db.execute("DELETE FROM history_messages WHERE session_id = ?", (session_id,))
                db.execute(
                    "INSERT OR REPLACE INTO history_tombstones (session_id, expires_at) "
                    "VALUES (?, ?)",
                    (session_id, self._clock() + self._ttl),
                )

        await self._run(end)

    async def purge(self) -> int:
        def purge(db: sqlite3.Connection) -> int:
            now = self._clock()
            with self._transaction(db):
                gone = db.execute("DELETE FROM history_messages WHERE expires_at <= ?", (now,))
                ended = db.execute("DELETE FROM history_tombstones WHERE expires_at <= ?", (now,))
            return gone.rowcount + ended.rowcount

        return await self._run(purge)

    async def close(self) -> None:
        def close(_: sqlite3.Connection) -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        try:
            if self._db is not None:
                await self._run(close)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
