"""A store whose failures never reach a turn: each call bounded, counted, logged once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..backends.base import ChatMessage
from .base import HistoryStore

if TYPE_CHECKING:
    from ..metrics import PerTutor

log = logging.getLogger("tutor_engine.history")

T = TypeVar("T")


class HistoryUnavailable(Exception):
    """The store failed or timed out for ``op`` (``load``, ``save``, ``end``, ``purge``)."""

    def __init__(self, op: str) -> None:
        super().__init__(f"history store unavailable ({op})")
        self.op = op


class GuardedHistory:
    """Calls ``store`` with a time bound; any failure becomes ``HistoryUnavailable``.

    Failures are counted in ``errors`` by op; the first failure after a success is logged
    as one WARNING line (no traceback), the first success after failures as one INFO line.
    """

    def __init__(
        self,
        store: HistoryStore,
        timeout_seconds: float,
        errors: PerTutor,
        seconds: PerTutor,
    ) -> None:
        self.store = store
        self.timeout = timeout_seconds
        self._errors = errors
        self._seconds = seconds
        self.healthy = True

    async def _call(self, op: str, work: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                result = await work()
        except Exception as exc:
            self._errors.labels(op).inc()
            if self.healthy:
                self.healthy = False
                reason = "timed out" if isinstance(exc, TimeoutError) else _describe(exc)
                log.warning("history store %s: %s failed: %s", self.store.name, op, reason)
            raise HistoryUnavailable(op) from None
        self._seconds.labels(op).observe(time.perf_counter() - started)
        if not self.healthy:
            self.healthy = True
            log.info("history store %s is reachable again", self.store.name)
        return result

    async def load(self, session_id: str) -> list[ChatMessage] | None:
        """The session's messages (``None``: ended); raises ``HistoryUnavailable``."""
        return await self._call("load", lambda: self.store.load(session_id))

    async def save(self, session_id: str, messages: Sequence[ChatMessage]) -> bool:
        """Append a turn (False: the session ended); raises ``HistoryUnavailable``."""
        return await self._call("save", lambda: self.store.append(session_id, messages))

    async def end(self, session_id: str) -> None:
        """Delete and tombstone the session; raises ``HistoryUnavailable``."""
        await self._call("end", lambda: self.store.end(session_id))

    async def purge(self) -> int:
        """Remove expired entries; raises ``HistoryUnavailable``."""
        return await self._call("purge", self.store.purge)

    def state(self) -> dict[str, Any]:
        """For ``/readyz``: which store, and whether its last call succeeded."""
        return {"store": self.store.name, "healthy": self.healthy}


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
