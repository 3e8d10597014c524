"""The local mode's session store: a SQLite file under STATE_DIR."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, fields, replace
from pathlib import Path
from typing import TypeVar, cast

from cachetools import TTLCache

from ..policy import has_capacity
from ..sessions import (
    TOMBSTONE_TTL_SECONDS,
    TOMBSTONES,
    CapacityError,
    Endings,
    EndReason,
    Session,
    StoreUnavailable,
)

log = logging.getLogger("tutor_gateway.sessions")

T = TypeVar("T")


class SessionDbError(Exception):
    """The local session database cannot be opened: corrupt, unreadable or from a newer gateway."""


# The schema, as migrations: MIGRATIONS[n] takes a database from user_version n to n + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE sessions ("
        " session_id TEXT PRIMARY KEY, tutor_id INTEGER NOT NULL, student_id INTEGER NOT NULL,"
        " kb_id TEXT, token_hash TEXT NOT NULL, status TEXT NOT NULL,"
        " created_at REAL NOT NULL, last_activity REAL NOT NULL)",
        "CREATE TABLE ended ("
        " session_id TEXT PRIMARY KEY, reason TEXT NOT NULL, ended_at REAL NOT NULL)",
        "CREATE INDEX ended_by_time ON ended (ended_at)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
COLUMNS = ", ".join(f.name for f in fields(Session))  # the order of the sessions table


def migrations_from(version: int) -> list[tuple[int, tuple[str, ...]]]:
    """The migrations a database at ``version`` needs, each with the version it leads to;
    ``ValueError`` for a version this gateway does not know (a newer gateway's database)."""
    if not 0 <= version <= SCHEMA_VERSION:
        raise ValueError(f"schema version {version}, this gateway knows 0 to {SCHEMA_VERSION}")
    return [(n + 1, MIGRATIONS[n]) for n in range(version, SCHEMA_VERSION)]


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction taken at once (``BEGIN IMMEDIATE``), rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class SessionDb:
    """The session database itself: blocking calls on one connection (see SqliteSessionStore).

    WAL with ``synchronous=NORMAL``: a commit survives the gateway's crash (SIGKILL included),
    only a power loss may take the last ones back.
    """

    def __init__(self, path: Path) -> None:
        """Open (creating it and its directory if needed), check and migrate; SessionDbError
        naming the file if it cannot be used."""
        self.path = path.absolute()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        except (OSError, sqlite3.Error) as exc:
            raise SessionDbError(f"cannot open the session database {self.path}: {exc}") from exc
        try:
            self._prepare()
        except (OSError, sqlite3.Error, ValueError) as exc:
            self.db.close()
            raise SessionDbError(
                f"cannot use the session database {self.path}: {exc} (move it away to start with "
                "no sessions)"
            ) from exc

    def _prepare(self) -> None:
        mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.OperationalError(f"journal mode {mode!r} instead of WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        check = self.db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        with _transaction(self.db):
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            for number, statements in migrations_from(version):
                for statement in statements:
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {number}")

    def insert(self, session: Session, max_sessions: int) -> bool:
        """Store a new session unless ``max_sessions`` are already stored."""
        with _transaction(self.db):
            if not has_capacity(self.count(), max_sessions):
                return False
            self.db.execute(
                f"INSERT INTO sessions ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", astuple(session)
            )
        return True

    def get(self, session_id: str) -> Session | None:
        row = self.db.execute(
            f"SELECT {COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)
        ).fetchone()
        return None if row is None else Session(*row)

    def all(self) -> list[Session]:
        rows = self.db.execute(f"SELECT {COLUMNS} FROM sessions ORDER BY created_at").fetchall()
        return [Session(*row) for row in rows]

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM sessions").fetchone()[0])

    def delete(
        self, session_id: str, reason: EndReason, now: float, keep_ended: float
    ) -> Session | None:
        """Remove a session and remember why it ended (forgetting endings older than
        ``keep_ended`` seconds); the session, or None if it was not stored."""
        with _transaction(self.db):
            session = self.get(session_id)
            if session is None:
                return None
            self.db.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
            self.db.execute(
                "INSERT OR REPLACE INTO ended VALUES (?, ?, ?)", (session_id, reason, now)
            )
            self.db.execute("DELETE FROM ended WHERE ended_at < ?", (now - keep_ended,))
        return session

    def touch(self, activity: dict[str, float]) -> set[str]:
        """Record activity times (never moving one back); the ids that are stored."""
        found: set[str] = set()
        with _transaction(self.db):
            for session_id, seen in activity.items():
                cursor = self.db.execute(
                    "UPDATE sessions SET last_activity = max(last_activity, ?)"
                    " WHERE session_id = ?",
                    (seen, session_id),
                )
                if cursor.rowcount:
                    found.add(session_id)
        return found

    def endings(self, since: float, limit: int) -> list[tuple[str, EndReason]]:
        """The latest ``limit`` endings after ``since``, oldest first."""
        rows = self.db.execute(
            "SELECT session_id, reason FROM ended WHERE ended_at >= ?"
            " ORDER BY ended_at DESC LIMIT ?",
            (since, limit),
        ).fetchall()
        return [(sid, cast(EndReason, reason)) for sid, reason in reversed(rows)]

    def close(self) -> None:
        self.db.close()


class SqliteSessionStore(Endings):
    """Sessions in a SQLite file under STATE_DIR (the embedded default; one gateway per file).

    A session survives a restart of the gateway: its token's hash, its activity and why it
    ended are on disk. Every database call runs on one worker thread that owns the connection,
    so the event loop never waits for the disk. Activity is written at most once per
    ``activity_interval`` per session; newer activity is kept in memory meanwhile (and written
    at ``close``), so only a crash loses any, at most that interval's.
    """

    def __init__(
        self,
        db: SessionDb,
        executor: ThreadPoolExecutor,
        max_sessions: int,
        activity_interval: float,
        clock: Callable[[], float],
        tombstones: int,
        tombstone_ttl: float,
    ) -> None:
        super().__init__(tombstones, tombstone_ttl, timer=clock)
        self._db = db
        self._executor = executor
        self.max_sessions = max_sessions
        self.activity_interval = activity_interval
        self._clock = clock
        self._seen: dict[str, float] = {}  # latest activity per live session, written or not
        self._written: TTLCache[str, float] = TTLCache(100_000, activity_interval, timer=clock)

    @classmethod
    async def open(
        cls,
        path: str | Path,
        max_sessions: int,
        activity_interval: float = 15.0,
        clock: Callable[[], float] = time.time,
        tombstones: int = TOMBSTONES,
        tombstone_ttl: float = TOMBSTONE_TTL_SECONDS,
    ) -> SqliteSessionStore:
        """Open the store at ``path``; SessionDbError if the file cannot be used."""
        executor = ThreadPoolExecutor(1, thread_name_prefix="session-db")
        loop = asyncio.get_running_loop()
        try:
            db = await loop.run_in_executor(executor, SessionDb, Path(path))
            ended = await loop.run_in_executor(
                executor, db.endings, clock() - tombstone_ttl, tombstones
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        store = cls(db, executor, max_sessions, activity_interval, clock, tombstones, tombstone_ttl)
        store._ended.update(ended)
        return store

    async def _call(self, function: Callable[..., T], *args: object) -> T:
        """Run a database call on the worker thread; StoreUnavailable if it fails."""
        loop = asyncio.get_running_loop()
        try:
            call = loop.run_in_executor(self._executor, function, *args)
        except RuntimeError as exc:  # the executor is shut down
            raise StoreUnavailable(f"session database {self._db.path} is closed") from exc
        try:
            return await call
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"session database {self._db.path} failed: {exc}") from exc

    def _current(self, session: Session) -> Session:
        """The session with its latest activity, written or not."""
        seen = self._seen.get(session.session_id, 0.0)
        return replace(session, last_activity=seen) if seen > session.last_activity else session

    async def create(
        self, tutor_id: int, student_id: int, kb_id: str | None, token_hash: str
    ) -> Session:
        now = self._clock()
        session = Session(
            session_id=str(uuid.uuid4()),
            tutor_id=tutor_id,
            student_id=student_id,
            kb_id=kb_id,
            token_hash=token_hash,
            status="active",
            created_at=now,
            last_activity=now,
        )
        if not await self._call(self._db.insert, session, self.max_sessions):
            raise CapacityError(f"Maximum number of sessions reached ({self.max_sessions})")
        return session

    async def get(self, session_id: str) -> Session | None:
        session = await self._call(self._db.get, session_id)
        return None if session is None else self._current(session)

    async def list(self) -> list[Session]:
        return [self._current(s) for s in await self._call(self._db.all)]

    async def count(self) -> int:
        return await self._call(self._db.count)

    async def delete(self, session_id: str, reason: EndReason = "deleted") -> Session | None:
        now = self._clock()
        session = await self._call(self._db.delete, session_id, reason, now, self.tombstone_ttl)
        self._seen.pop(session_id, None)
        self._written.pop(session_id, None)
        if session is not None:
            await self._removed(session, reason)
        return session

    async def touch(self, session_id: str) -> None:
        """Record activity; written to the database at most once per ``activity_interval``."""
        now = self._clock()
        self._seen[session_id] = now
        if session_id in self._written:
            return
        self._written[session_id] = now
        try:
            found = await self._call(self._db.touch, {session_id: now})
        except StoreUnavailable as exc:
            log.warning("could not record activity on %s: %s", session_id[:8], exc)
            return
        if session_id not in found:  # ended meanwhile
            self._seen.pop(session_id, None)

    async def close(self) -> None:
        """Write the activity not yet written and close the database."""
        try:
            await self._call(self._db.touch, dict(self._seen))
        except StoreUnavailable as exc:
            log.warning("could not record the latest activity: %s", exc)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
        self._executor.shutdown(wait=False)
