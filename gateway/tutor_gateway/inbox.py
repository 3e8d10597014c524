"""A connection's frames waiting for its engine, bounded in bytes rather than in frames."""

from __future__ import annotations

import asyncio
from collections import deque


class FrameInbox:
    """FIFO of encoded frames holding at most ``max_bytes``; ``put`` waits while it is full.

    Waiting is the backpressure: while a client's frames wait here, the gateway stops reading
    that client's socket, so its sends stall in its own TCP buffer, not in our memory. A frame
    larger than the whole budget is let in only when the inbox is empty.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: deque[tuple[bytes, bool]] = deque()
        self._bytes = 0
        self._changed = asyncio.Condition()

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def _fits(self, size: int) -> bool:
        return not self._frames or self._bytes + size <= self.max_bytes

    async def put(self, data: bytes, text: bool) -> None:
        """Queue one frame (its bytes, and whether it is a text frame), waiting for room."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._fits(len(data)))
            self._frames.append((data, text))
            self._bytes += len(data)
            self._changed.notify_all()

    async def get(self) -> tuple[bytes, bool]:
        """The oldest frame, waiting for one."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._frames))
            data, text = self._frames.popleft()
            self._bytes -= len(data)
            self._changed.notify_all()
            return data, text

    def clear(self) -> None:
        """Drop everything queued (the connection is over)."""
        self._frames.clear()
        self._bytes = 0
