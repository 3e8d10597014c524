"""Fair sharing of one engine between its sessions.

- ``FairSlots``: at most ``limit`` holders at once, granted strictly first come, first served
  (a released slot goes to the oldest waiter, never to a newcomer that arrives meanwhile);
  a waiter may ask with a ``priority`` (lower first; FIFO among equals).
- ``TurnScheduler``: each session runs one turn at a time, and a turn then takes one of the
  engine's ``max_concurrent_turns`` slots. A session that sends many messages therefore waits
  for its own turns, while every other session's next turn queues once, in arrival order:
  sessions interleave, and none can hold more than one slot.
- ``run_holding``: run a coroutine while holding a slot until it has really finished, even
  when its caller is cancelled (a decode in a thread keeps going; so does its slot).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Priorities of speech work in one engine's slots (lower first): the speech that starts a
# reply, then hearing a question, then the rest of the replies' speech (``speech_priority``).
FIRST_SPEECH, HEARING, LATER_SPEECH = 0, 1, 2


def speech_priority(sentence: int) -> int:
    """The priority of a reply's ``sentence``-th speech (0: its first): the first goes before
    hearing, and each later one behind every other reply's earlier ones."""
    return FIRST_SPEECH if sentence == 0 else LATER_SPEECH + sentence - 1


class FairSlots:
    """A FIFO semaphore: ``limit`` slots, waiters served by priority, then in the order they
    asked."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("FairSlots needs at least one slot")
        self.limit = limit
        self._free = limit
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap
        self._waiting = 0  # waiters neither granted nor cancelled (the heap keeps the latter)
        self._order = itertools.count()

    @property
    def in_use(self) -> int:
        return self.limit - self._free

    @property
    def waiting(self) -> int:
        return self._waiting

    async def acquire(self, priority: int = 0) -> None:
        if self._free and not self._waiting:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), waiter))
        self._waiting += 1
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as we were cancelled: pass it on
            else:
                waiter.cancel()  # skipped (and dropped) by release
                self._waiting -= 1
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the oldest waiter
                self._waiting -= 1
                return
        self._free = min(self.limit, self._free + 1)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()


class TurnScheduler:
    """One turn at a time per session; ``max_concurrent`` turns at a time per engine, FIFO."""

    def __init__(self, max_concurrent: int) -> None:
        self.slots = FairSlots(max_concurrent)
        self._sessions: dict[str, tuple[FairSlots, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, session_id: str) -> AsyncIterator[None]:
        """Wait for this session's previous turn, then for an engine slot; hold both."""
        own, users = self._sessions.setdefault(session_id, (FairSlots(1), [0]))
        users[0] += 1
        try:
            async with own.hold(), self.slots.hold():
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._sessions[session_id]

    @property
    def running(self) -> int:
        return self.slots.in_use

    @property
    def waiting(self) -> int:
        """Turns that have their session's turn but wait for an engine slot."""
        return self.slots.waiting


async def run_holding(slots: FairSlots, work: Coroutine[Any, Any, T], priority: int = 0) -> T:
    """Await ``work`` in a slot (asked with ``priority``); if the caller is cancelled, the slot
    is kept until it ends.

    Work that runs in a thread cannot be cancelled: releasing its slot early would let more
    of it run at once than the limit says.
    """
    try:
        await slots.acquire(priority)
    except BaseException:
        work.close()
        raise
    task = asyncio.ensure_future(work)

    def finished(done: asyncio.Future[T]) -> None:
        slots.release()
        if not done.cancelled():
            done.exception()  # retrieved: a cancelled caller no longer wants it

    task.add_done_callback(finished)
    try:
        return await asyncio.shield(task)
    finally:
        # The exception's traceback holds this frame: without this, frame -> task -> exception
        # -> traceback -> frame is a cycle keeping the work's arguments (audio) until a gc.
        del task, work
