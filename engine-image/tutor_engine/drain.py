"""uvicorn's server with a drain on SIGTERM: finish the turns in flight, then exit 0.

uvicorn's own handler sets ``should_exit`` at once, and its shutdown closes every WebSocket
(1012) without waiting for replies; afterwards it re-raises the signal, so the process dies
by it. Here the first SIGTERM or SIGINT starts ``drain`` instead (the engine refuses new
sessions, lets turns finish within ``ENGINE_DRAIN_SECONDS``, closes the rest with 1012) and
only then stops the server, which returns normally: exit code 0. A second signal stops at once,
as uvicorn would.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn

log = logging.getLogger("tutor_engine")


class DrainingServer(uvicorn.Server):
    """A ``uvicorn.Server`` that awaits ``drain()`` between the first signal and the stop."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Future[None] | None = None
        self._drain_requested = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_requested or self._loop is None or not self.started:
            super().handle_exit(sig, frame)  # a second signal, or one before startup
            return
        self._drain_requested = True
        log.info("%s: draining before exit", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        async def drain_then_stop() -> None:
            try:
                await self._drain()
            except Exception:
                log.exception("drain failed; stopping now")
            finally:
                self.should_exit = True

        self._drain_task = asyncio.ensure_future(drain_then_stop())
