"""Local engines on record, so that none outlives its gateway (embedded mode).

Two safeguards, for the two ways an engine could be left behind:

- ``ParentLink``: every engine this gateway starts gets ``--parent-pid`` and the read end of a
  pipe whose only write end this process holds. The engine exits at once when the gateway dies
  (the parent-death signal on Linux, the pipe's EOF everywhere; see
  ``tutor_engine.parent_watch``).
- ``EngineRegistry``: each running engine is recorded as a small JSON file in
  ``<STATE_DIR>/engines/`` (pid, process start time, command line, tutor, port, gateway pid and
  start time), removed when the engine stops. A gateway starting on the same state directory
  stops the engines recorded there whose gateway is dead, in case a watch could not fire. It
  stops them rather than adopting them: such an engine's sessions died with the old gateway's
  in-memory store, its key is one the new gateway never knew, it is no child of the new gateway
  (no exit status, no pipe) and the next session of its tutor starts a fresh one on demand. A
  recorded pid is only signalled if its start time and command line still match the record,
  so a pid the system has since given to another process is never killed.

``verdict`` and ``EngineRecord`` are plain functions of plain data; psutil only gathers facts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import psutil

log = logging.getLogger("tutor_gateway.engine_registry")

# Start times are compared with this slack: psutil derives them from the boot time, which
# Linux reports in whole seconds and which may shift by one between two gateways' readings.
START_TIME_SLACK = 1.5


@dataclass(frozen=True)
class ParentLink:
    """This gateway's end of the engines' parent watch: one pipe for the process's lifetime."""

    read_fd: int
    write_fd: int

    def engine_args(self) -> list[str]:
        """Arguments that make an engine exit when this process dies."""
        return ["--parent-pid", str(os.getpid()), "--parent-fd", str(self.read_fd)]

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """File descriptors the engine must inherit (the read end only, never the write end)."""
        return (self.read_fd,)


@functools.cache
def parent_link() -> ParentLink:
    """The process's parent link, created on first use and open until the process exits.

    Both ends are non-inheritable (``os.pipe``); ``pass_fds`` hands only the read end to each
    engine, so the kernel closes the last write end exactly when this process ends.
    """
    return ParentLink(*os.pipe())


@dataclass(frozen=True)
class Identity:
    """What a pid is now: its start time (seconds since the epoch) and command line."""

    start_time: float
    cmdline: tuple[str, ...]


@dataclass(frozen=True)
class EngineRecord:
    """One local engine as its gateway recorded it."""

    pid: int
    start_time: float
    cmdline: tuple[str, ...]
    tutor_id: int
    port: int
    gateway_pid: int
    gateway_start_time: float

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "cmdline": list(self.cmdline)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngineRecord:
        """Parse a record; ``ValueError`` if it is not one."""
        try:
            data = json.loads(text)
            record = cls(
                pid=int(data["pid"]),
                start_time=float(data["start_time"]),
                cmdline=tuple(str(arg) for arg in data["cmdline"]),
                tutor_id=int(data["tutor_id"]),
                port=int(data["port"]),
                gateway_pid=int(data["gateway_pid"]),
                gateway_start_time=float(data["gateway_start_time"]),
            )
        except (TypeError, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"not an engine record: {exc}") from exc
        if record.pid <= 0 or record.gateway_pid <= 0 or not record.cmdline:
            raise ValueError("not an engine record: bad pid or empty command line")
        return record


def same_start(recorded: float, seen: float) -> bool:
    return abs(recorded - seen) <= START_TIME_SLACK


def verdict(
    record: EngineRecord, engine: Identity | None, gateway_start: float | None
) -> Literal["keep", "stop", "forget"]:
    """What a starting gateway does with a record, given what its pids are now.

    ``engine``: the recorded pid's identity now (None: no such live process); ``gateway_start``:
    the recorded gateway pid's start time now (None: no such live process).
    keep: its gateway is alive (another gateway's engine, not ours to touch); stop: its gateway
    is dead and the pid is still that engine; forget: the engine is gone, or its pid now belongs
    to another process, which is left alone.
    """
    if gateway_start is not None and same_start(record.gateway_start_time, gateway_start):
        return "keep"
    if (
        engine is not None
        and same_start(record.start_time, engine.start_time)
        and engine.cmdline == record.cmdline
    ):
        return "stop"
    return "forget"


def _process(pid: int) -> psutil.Process | None:
    """The live process with this pid (a zombie is dead: it holds no memory and no socket)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return process


def identity(process: psutil.Process | None) -> Identity | None:
    if process is None:
        return None
    try:
        with process.oneshot():
            return Identity(process.create_time(), tuple(process.cmdline()))
    except psutil.Error:  # gone, a zombie, or not ours to inspect
        return None


def _gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


class EngineRegistry:
    """The records of this state directory's local engines (``None``: keep no records)."""

    def __init__(self, state_dir: str | os.PathLike[str] | None) -> None:
        self.directory = Path(state_dir) / "engines" if state_dir is not None else None
        self._gateway_start: float | None = None

    def _path(self, pid: int) -> Path:
        assert self.directory is not None
        return self.directory / f"engine-{pid}.json"

    def add(self, pid: int, tutor_id: int, port: int, argv: Sequence[str]) -> EngineRecord | None:
        """Record an engine this gateway just started with ``argv`` (nothing if it exited).

        The command line recorded is the ``argv`` given to exec, not ``/proc``'s: just after
        exec, before the kernel has set up the new arguments, ``/proc`` reads it as empty.
        """
        if self.directory is None:
            return None
        seen = identity(_process(pid))
        if seen is None:
            return None
        if self._gateway_start is None:
            self._gateway_start = psutil.Process().create_time()
        cmdline = tuple(str(arg) for arg in argv)
        record = EngineRecord(
            pid, seen.start_time, cmdline, tutor_id, port, os.getpid(), self._gateway_start
        )
        self.write(record)
        return record

    def write(self, record: EngineRecord) -> None:
        """Write a record atomically; a state directory that cannot be written only warns."""
        assert self.directory is not None
        path = self._path(record.pid)
        partial = path.with_suffix(".tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            partial.write_text(record.to_json())
            os.replace(partial, path)
        except OSError as exc:
            log.warning("cannot record engine pid %s in %s: %s", record.pid, self.directory, exc)

    def remove(self, pid: int) -> None:
        """Forget an engine that stopped."""
        if self.directory is not None:
            with contextlib.suppress(OSError):
                self._path(pid).unlink(missing_ok=True)

    def records(self) -> list[tuple[Path, EngineRecord | None]]:
        """Every record file and its record (None: unreadable or not a record)."""
        if self.directory is None or not self.directory.is_dir():
            return []
        found: list[tuple[Path, EngineRecord | None]] = []
        for path in sorted(self.directory.glob("engine-*.json")):
            try:
                found.append((path, EngineRecord.from_json(path.read_text())))
            except (OSError, ValueError):
                found.append((path, None))
        return found

    def stop_stale(self, grace: float = 3.0) -> list[EngineRecord]:
        """Stop the recorded engines whose gateway is dead (SIGTERM, SIGKILL after ``grace``
        seconds) and drop the records of engines that are gone; return the engines stopped.

        Blocking (up to about ``grace`` + 2 s); call it before starting engines.
        """
        stale: list[tuple[Path, EngineRecord, psutil.Process]] = []
        for path, record in self.records():
            if record is None:
                log.warning("dropping unreadable engine record %s", path)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            engine = _process(record.pid)
            gateway = identity(_process(record.gateway_pid))
            decision = verdict(record, identity(engine), gateway.start_time if gateway else None)
            if decision == "stop" and engine is not None:
                stale.append((path, record, engine))
            elif decision == "forget":
                if engine is not None:
                    log.info(
                        "engine record %s: pid %s is now another process; left alone",
                        path.name,
                        record.pid,
                    )
                with contextlib.suppress(OSError):
                    path.unlink()
        for _, record, engine in stale:
            log.warning(
                "stopping stale engine for tutor %s (pid %s, port %s) left by gateway pid %s",
                record.tutor_id,
                record.pid,
                record.port,
                record.gateway_pid,
            )
            with contextlib.suppress(psutil.Error):
                engine.terminate()  # psutil checks the pid was not reused meanwhile
        left = self._wait_gone([engine for _, _, engine in stale], grace)
        for engine in left:
            log.warning("stale engine pid %s ignored SIGTERM; killing it", engine.pid)
            with contextlib.suppress(psutil.Error):
                engine.kill()
        left = self._wait_gone(left, 2.0)
        for path, record, engine in stale:
            if engine in left:
                log.error("stale engine pid %s could not be stopped", record.pid)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        return [record for _, record, engine in stale if engine not in left]

    @staticmethod
    def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
        """Wait until the processes are gone (zombies count as gone); return those left."""
        deadline = time.monotonic() + timeout
        left = [p for p in processes if not _gone(p)]
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [p for p in left if not _gone(p)]
        return left
