"""A connection's frames on their way to its engine: waiting, and sent but not yet settled.

Frames wait in the inbox while the engine starts; once sent, each is held until the engine's
receipt says it is settled (``tutor_contract.relay``), so that when the engine goes away the
frames it never started can be sent again to the next one. Both kinds count against one byte
bound (``MAX_QUEUED_BYTES``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field, replace

from tutor_contract.relay import MAX_REPLY_ID, Receipt

# Frames held for an engine that has sent no receipt yet; older ones are forgotten.
MAX_UNRECEIPTED_FRAMES = 256


@dataclass
class SentFrame:
    """A frame sent on the current engine connection, number ``seq`` there (as the engine
    counts)."""

    seq: int
    data: bytes
    text: bool
    started: bool = False
    stream: bool = False  # the connection's mode when its turn started


@dataclass(frozen=True)
class Loss:
    """What the loss of an engine connection means for the frames sent on it."""

    replay: list[tuple[bytes, bool]] = field(default_factory=list)  # never started, in order
    in_flight: bool = False  # a turn had started and was not done (or, unreceipted, may have)
    streaming: bool = False  # that turn ran on a streaming connection: it ends ``interrupted``
    receipted: bool = False  # the engine sent receipts: ``in_flight`` is known, not presumed


class SentFrames:
    """The frames sent on one engine connection and not yet settled (no I/O, no clock).

    Receipts settle them. While an engine has sent no receipt (an older engine never does),
    every frame sent may be in flight; such frames are forgotten, oldest first, when their room
    is needed (or past ``MAX_UNRECEIPTED_FRAMES``), and are never sent again.
    """

    def __init__(self) -> None:
        self._frames: dict[int, SentFrame] = {}  # in sending order
        self._next = 1
        self._forgotten = 0  # frames forgotten and not known to be settled since
        self._forgotten_upto = 0  # the newest of them
        self.latest: Receipt | None = None  # the connection's state as last reported
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def untouched(self) -> bool:
        """No frame has been sent on this connection."""
        return self._next == 1

    @property
    def receipted(self) -> bool:
        """Whether the engine has sent a receipt on this connection."""
        return self.latest is not None

    def add(self, data: bytes, text: bool) -> int:
        """Record the next frame sent; its number."""
        if not self.receipted and len(self._frames) >= MAX_UNRECEIPTED_FRAMES:
            self.forget_oldest()
        seq, self._next = self._next, self._next + 1
        self._frames[seq] = SentFrame(seq, data, text)
        self.bytes += len(data)
        return seq

    def _pop(self, seq: int) -> None:
        self.bytes -= len(self._frames.pop(seq).data)

    def apply(self, receipt: Receipt) -> None:
        """Take in a receipt; one for a frame never sent or already settled changes nothing
        but the mode."""
        self.latest = receipt
        frame = self._frames.get(receipt.seq)
        if frame is None:
            if not receipt.started and 0 < receipt.seq <= self._forgotten_upto:
                self._forgotten = max(0, self._forgotten - 1)
        elif receipt.started:
            frame.started, frame.stream = True, receipt.stream
        else:
            self._pop(receipt.seq)

    def forget_oldest(self) -> bool:
        """Drop the oldest frame held, if no receipt ever came; whether one was dropped."""
        if self.receipted or not self._frames:
            return False
        seq = next(iter(self._frames))
        self._pop(seq)
        self._forgotten += 1
        self._forgotten_upto = seq
        return True

    def lost(self) -> Loss:
        """The connection is gone: which frames to send again, and whether a reply was cut.

        With receipts: frames newer than the last one started were never started and are
        replayed; an unstarted frame older than a started one was superseded (its settling
        receipt was lost with the engine); a forgotten frame not known to be settled counts as
        in flight. Without receipts, nothing is replayed and any frame sent may have been in
        flight.
        """
        frames = list(self._frames.values())
        if not self.receipted:
            return Loss(in_flight=bool(frames) or self._forgotten > 0)
        last_started = max((f.seq for f in frames if f.started), default=0)
        running = [f for f in frames if f.started]
        return Loss(
            replay=[(f.data, f.text) for f in frames if f.seq > last_started],
            in_flight=bool(running) or self._forgotten > 0,
            streaming=bool(running) and running[-1].stream,
            receipted=True,
        )


class FrameInbox:
    """FIFO of encoded frames for the engine, bounded in bytes together with the frames sent
    and not yet settled; ``put`` waits while it is full.

    Waiting is the backpressure: while a client's frames wait here, the gateway stops reading
    that client's socket, so its sends stall in its own TCP buffer, not in our memory. A frame
    larger than the whole budget is let in only when nothing else is held.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: deque[tuple[bytes, bool]] = deque()
        self._bytes = 0  # of the queued frames
        self.sent = SentFrames()
        self.latest: Receipt | None = None  # the state the next engine connection opens in
        self._changed = asyncio.Condition()

    @property
    def queued_bytes(self) -> int:
        """Bytes held: queued for the engine, or sent and not yet settled."""
        return self._bytes + self.sent.bytes

    @property
    def releasable(self) -> bool:
        """Whether the engine connection may be given up, losing nothing: nothing is queued,
        every frame sent is settled, and either none was sent or the engine reported the state
        the next connection is opened in (receipts), with no audio stream open."""
        latest = self.sent.latest
        known = self.sent.untouched or (latest is not None and not latest.held)
        return known and not self._frames and not self.sent

    def _fits(self, size: int) -> bool:
        if not self._frames and not self.sent.bytes:
            return True
        return self.queued_bytes + size <= self.max_bytes

    async def put(self, data: bytes, text: bool) -> None:
        """Queue one frame (its bytes, and whether it is a text frame), waiting for room."""
        async with self._changed:
            while not self._fits(len(data)):
                if not self.sent.forget_oldest():
                    await self._changed.wait()
            self._frames.append((data, text))
            self._bytes += len(data)
            self._changed.notify_all()

    async def get(self) -> tuple[bytes, bool]:
        """The oldest frame, waiting for one; from now on it is held as sent."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._frames))
            data, text = self._frames.popleft()
            self._bytes -= len(data)
            self.sent.add(data, text)
            self._changed.notify_all()  # unreceipted frames held may be forgotten for room
            return data, text

    async def wait_queued(self) -> None:
        """Wait until a frame is queued (it stays queued)."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._frames))

    async def settle(self, receipt: Receipt) -> None:
        """Apply an engine's receipt (a settled frame frees its room)."""
        async with self._changed:
            self.sent.apply(receipt)
            self._changed.notify_all()

    async def lost(self) -> Loss:
        """The engine connection is gone (or given up): frames it never started go back to the
        front of the queue, in order; the next connection numbers its frames from 1 again,
        opens in the state this one last reported, and gives reply ids after any the cut reply
        may have had."""
        async with self._changed:
            loss = self.sent.lost()
            latest = self.sent.latest or self.latest  # none reported: as it was opened
            if loss.in_flight and latest is not None:  # its reply may have taken an id
                latest = replace(latest, reply=min(latest.reply + 1, MAX_REPLY_ID))
            self.latest, self.sent = latest, SentFrames()
            self._frames.extendleft(reversed(loss.replay))
            self._bytes += sum(len(data) for data, _ in loss.replay)
            self._changed.notify_all()
            return loss

    def clear(self) -> None:
        """Drop everything held (the connection is over)."""
        self._frames.clear()
        self._bytes = 0
        self.sent = SentFrames()
