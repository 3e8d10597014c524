"""Exit at once when the gateway that started this engine dies (local mode only).

A local engine is a child of the gateway (``python -m tutor_engine --fd N --parent-pid P
--parent-fd R``). If the gateway dies, by any signal, SIGKILL included, the engine must not
stay behind holding its port and its models. Two independent mechanisms, both armed:

- Linux: the parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``): the kernel kills the
  engine the moment its parent exits. It is set here, in the engine, after exec; if the gateway
  died before that, the kernel would never send it, so ``getppid()`` is checked again after
  setting it. (The kernel ties it to the *thread* that started the child: the gateway starts
  engines from its event loop's thread, which lives as long as the gateway serves.)
- Everywhere: a watch on the gateway. With ``--parent-fd`` it is the read end of a pipe whose
  only write end the gateway holds: when the gateway is gone, for whatever reason, the kernel
  closes it and the read returns EOF. Without a pipe, the gateway's pid is polled.

Either way the engine ends with ``os._exit`` (no graceful shutdown: nobody is left to talk to,
and open WebSockets must not hold it up), which releases its listening socket. Pods never pass
these flags: their lifetime belongs to Kubernetes.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("tutor_engine.parent_watch")

EXIT_PARENT_GONE = 4  # nobody reads it (the parent is gone); distinct from 3 (load failure)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_HARD_EXIT_AFTER = 1.0  # if even the last log line blocks (a full stderr pipe), SIGKILL


def watch_parent(
    parent_pid: int,
    pipe_fd: int | None = None,
    *,
    death_signal: bool = True,
    poll_interval: float = 0.5,
) -> None:
    """Arm the watches for ``parent_pid``; returns at once (the watch runs in a daemon thread).

    ``pipe_fd`` is the read end of the gateway's pipe (EOF = gateway gone); without it the
    gateway's pid is polled every ``poll_interval`` seconds. ``death_signal`` also sets the
    Linux parent-death signal when the gateway is this process's direct parent (it is not when
    ``ENGINE_COMMAND`` is a wrapper that forks; the pipe still works through one).
    """
    direct_child = os.getppid() == parent_pid
    if death_signal and direct_child and sys.platform.startswith("linux"):
        _set_parent_death_signal()
        if os.getppid() != parent_pid:  # the gateway died before prctl took effect
            _exit_now(f"gateway (pid {parent_pid}) was gone before the watch was set")
    if pipe_fd is not None:
        watch = functools.partial(_wait_for_eof, pipe_fd, parent_pid)
    else:
        watch = functools.partial(_poll_parent, parent_pid, direct_child, poll_interval)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _set_parent_death_signal() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        result = libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError) as exc:
        log.warning("cannot set the parent-death signal (%s); the gateway watch remains", exc)
        return
    if result != 0:
        error = os.strerror(ctypes.get_errno())
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s; the gateway watch remains", error)


def _wait_for_eof(pipe_fd: int, parent_pid: int) -> None:
    while True:
        try:
            data = os.read(pipe_fd, 4096)
        except InterruptedError:
            continue
        except OSError as exc:
            log.warning("cannot read the gateway pipe (%s); polling the gateway instead", exc)
            _poll_parent(parent_pid, os.getppid() == parent_pid, 0.5)
            return
        if not data:
            _exit_now(f"gateway (pid {parent_pid}) is gone (its pipe closed)")


def _poll_parent(parent_pid: int, direct_child: bool, interval: float) -> None:
    while True:
        if direct_child and os.getppid() != parent_pid:  # reparented: the gateway exited
            _exit_now(f"gateway (pid {parent_pid}) is gone (this engine was reparented)")
        if not direct_child and not _pid_exists(parent_pid):
            _exit_now(f"gateway (pid {parent_pid}) is gone")
        time.sleep(interval)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exit_now(reason: str) -> None:
    """End the process now: no shutdown handlers, no waiting for connections."""
    killer = threading.Timer(_HARD_EXIT_AFTER, os.kill, (os.getpid(), signal.SIGKILL))
    killer.daemon = True
    killer.start()
    with contextlib.suppress(Exception):
        log.warning("%s; exiting now", reason)
    os._exit(EXIT_PARENT_GONE)
