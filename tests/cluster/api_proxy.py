"""A TCP proxy between a gateway and the API emulator, with switches for network faults.

``hold()`` stops passing requests on (bytes from the clients wait, on open connections and new
ones) until ``release()``: the gateway's watch is "down" and its next request lands only when
the test says so. ``stall()`` makes the connections open now go silent in both directions
without closing them, for good (a half-open watch); new connections work.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from typing import Any


@dataclasses.dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    stalled: bool = False


class ApiProxy:
    """Forwards 127.0.0.1:<port> to ``target_port``; see the module docstring."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.target_port, self.port = host, target_port, 0
        self.held = 0  # client chunks waiting at the gate now
        self._loop = asyncio.new_event_loop()
        self._links: set[_Link] = set()
        self._gate: asyncio.Event | None = None
        self._dead: asyncio.Event | None = None  # set at shutdown: stalled links end
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="api-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- switches (called from the test's thread) --

    def _call(self, fn: Any) -> Any:
        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)

    def hold(self) -> None:
        self._call(lambda: self._gate and self._gate.clear())

    def release(self) -> None:
        self._call(lambda: self._gate and self._gate.set())

    def stall(self) -> None:
        def stall() -> None:
            for link in self._links:
                link.stalled = True

        self._call(stall)

    # -- forwarding --

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool
    ) -> None:
        assert self._gate is not None
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if up and not self._gate.is_set():
                    self.held += 1
                    await self._gate.wait()
                    self.held -= 1
                if link.stalled:
                    assert self._dead is not None
                    await self._dead.wait()  # silent until shutdown; the sockets stay open
                    return
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.write_eof()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        self._links.add(link)
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
            link.upstream = up_writer
            await asyncio.gather(
                self._pump(link, reader, up_writer, up=True),
                self._pump(link, up_reader, writer, up=False),
            )
        except (ConnectionError, OSError):
            pass
        finally:
            self._links.discard(link)
            for w in (writer, link.upstream):
                if w is not None:
                    w.close()

    # -- lifecycle --

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop, self._gate, self._dead = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._gate.set()
        server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        await self._stop.wait()
        server.close()
        self._dead.set()
        self._gate.set()
        for link in list(self._links):
            for writer in (link.client, link.upstream):
                if writer is not None:
                    writer.close()
        others = asyncio.all_tasks() - {asyncio.current_task()}
        await asyncio.wait(others, timeout=2) if others else None

    def start(self) -> ApiProxy:
        self._thread.start()
        if not self._started.wait(timeout=10):
            raise RuntimeError("the API proxy did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def __enter__(self) -> ApiProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
