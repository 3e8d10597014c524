"""Cold start as clients see it: an engine's state for REST, and ``status`` events on the
WebSocket while a client waits for its engine.

The state of a session's engine (``EngineState``) is what the router knows: in a cluster the
TutorSession's phase and its ``Ready`` condition (reason, message, lastTransitionTime, as the
operator writes them); locally what the local provisioner saw of the engine process (started,
answering ``/readyz`` 503 with a reason, ready, failed). REST shows it as the session's
``engine`` object; a WebSocket client that opted in (``?events=1``, or an ``options`` message
with ``"events": true`` sent while it waits) gets it as ``status`` messages::

    {"type": "status", "state": "loading", "reason": "Loading",
     "message": "pod tutor-1-7d9c: engine is loading its models",
     "elapsed_seconds": 42, "timestamp": "2024-12-22T12:00:42"}

on every change of (state, reason, message) and at least every ``STATUS_INTERVAL_SECONDS``
while it waits, then one ``ready`` once its frames are relayed to an engine, both at the
start and after a failover. Clients that did not opt in get none of them.

Everything but ``StatusFeed`` is a pure function of plain data.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tutor_contract.crd import (
    ACTIVE,
    ASSIGNED,
    AT_CAPACITY,
    CRASHING,
    ERR_IMAGE_PULL,
    FAILED,
    IMAGE_PULL_BACKOFF,
    LOADING,
    MODEL_LOAD_FAILED,
    PENDING,
    PULLING,
    READY,
    SCALING_UP,
    SCHEDULING,
    STARTING,
    format_time,
    parse_time,
)

from .schemas import iso

# The ``state`` of a status event.
STATE_STARTING = "starting"
STATE_SCHEDULING = "scheduling"
STATE_PULLING = "pulling"
STATE_LOADING = "loading"
STATE_READY = "ready"
STATES = (STATE_STARTING, STATE_SCHEDULING, STATE_PULLING, STATE_LOADING, STATE_READY)

# Reasons of the local provisioner that the operator does not have (the rest are shared:
# Starting, Loading, Crashing, ModelLoadFailed).
NOT_STARTED = "NotStarted"  # local: no engine process for the tutor; the WebSocket starts one
LOCAL_READY = READY  # local: the tutor's engine process answers /readyz 200
CONNECTING = "Connecting"  # the engine is ready; the gateway is opening its connection to it

_STATE_OF_REASON = {
    SCHEDULING: STATE_SCHEDULING,
    PULLING: STATE_PULLING,
    ERR_IMAGE_PULL: STATE_PULLING,
    IMAGE_PULL_BACKOFF: STATE_PULLING,
    LOADING: STATE_LOADING,
    MODEL_LOAD_FAILED: STATE_LOADING,
    ASSIGNED: STATE_READY,
    LOCAL_READY: STATE_READY,
    # Everything else waits for an engine to come up at all.
    SCALING_UP: STATE_STARTING,
    STARTING: STATE_STARTING,
    AT_CAPACITY: STATE_STARTING,
    CRASHING: STATE_STARTING,
    NOT_STARTED: STATE_STARTING,
}

STATUS_INTERVAL_SECONDS = 3.0  # a waiting client hears at least this often
POLL_SECONDS = 0.25  # how often the engine's state is looked at while a client waits
READY_GRACE_SECONDS = 1.0  # an engine ready but not yet connected is shown only after this
MAX_OPTIONS_PEEK_CHARS = 1024  # larger client frames are never looked into


@dataclass(frozen=True)
class EngineState:
    """A session's engine as the router knows it (REST ``engine``; ``status`` events)."""

    phase: str  # Pending, Active or Failed: the TutorSession phases, in both modes
    reason: str  # the operator's Ready reason, or the local provisioner's
    message: str = ""
    since: float | None = None  # epoch seconds: when it entered this phase

    @property
    def ready(self) -> bool:
        return self.phase == ACTIVE

    def as_json(self) -> dict[str, Any]:
        """The REST ``engine`` object."""
        since = None
        if self.since is not None:
            since = format_time(dt.datetime.fromtimestamp(self.since, dt.UTC))
        return {"phase": self.phase, "reason": self.reason, "message": self.message, "since": since}


def client_state(reason: str) -> str:
    """The ``state`` of a status event for a Ready-condition reason."""
    return _STATE_OF_REASON.get(reason, STATE_STARTING)


def cluster_engine_state(obj: Mapping[str, Any] | None) -> EngineState:
    """A TutorSession's engine: its phase and Ready condition (no condition yet: ``Pending``)."""
    status = (obj or {}).get("status") or {}
    phase = status.get("phase") or PENDING
    for condition in status.get("conditions") or []:
        if condition.get("type") == READY:
            moment = parse_time(condition.get("lastTransitionTime"))
            return EngineState(
                phase=phase,
                reason=condition.get("reason") or phase,
                message=condition.get("message") or "",
                since=moment.timestamp() if moment else None,
            )
    created = parse_time(((obj or {}).get("metadata") or {}).get("creationTimestamp"))
    message = "waiting for the operator to place the session" if obj else "session not seen yet"
    return EngineState(phase, phase, message, created.timestamp() if created else None)


# Local mode: no engine process runs for the tutor (the session's WebSocket starts one).
NOT_STARTED_STATE = EngineState(PENDING, NOT_STARTED, "the engine starts when the session connects")


def engine_state_of(router: object, session: object) -> EngineState | None:
    """The router's view of a session's engine, if the router keeps one (``engine_state``)."""
    getter = getattr(router, "engine_state", None)
    return None if getter is None else getter(session)


def wants_events(value: str | None) -> bool:
    """Whether a query value (``?events=1``) opts in, as ``stream`` does."""
    return (value or "").lower() in ("1", "true", "yes", "on")


def options_events(text: str) -> bool | None:
    """The ``events`` choice of a small ``options`` message; ``None`` for anything else.

    Cheap on frames that are not one: only text of at most ``MAX_OPTIONS_PEEK_CHARS``
    mentioning ``options`` is parsed.
    """
    if len(text) > MAX_OPTIONS_PEEK_CHARS or "options" not in text:
        return None
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict) or payload.get("type") != "options":
        return None
    events = payload.get("events")
    return events if isinstance(events, bool) else None


def status_event(state: str, reason: str, message: str, elapsed: float) -> dict[str, Any]:
    """The ``status`` message."""
    return {
        "type": "status",
        "state": state,
        "reason": reason,
        "message": message,
        "elapsed_seconds": max(0, int(elapsed)),
        "timestamp": iso(time.time()),
    }


def waiting_view(state: EngineState | None, waited: float) -> tuple[str, str, str] | None:
    """(state, reason, message) to show a client that waits, or ``None`` to show nothing yet.

    An engine that is ready while the connection to it is not open yet shows as
    ``starting``/``Connecting``, and only after ``READY_GRACE_SECONDS`` (a warm engine's client
    hears just ``ready``); ``ready`` itself comes only once frames are relayed.
    """
    if state is None:
        return STATE_STARTING, PENDING, "waiting for the tutor's engine"
    shown = client_state(state.reason)
    if state.ready or shown == STATE_READY:
        if waited < READY_GRACE_SECONDS:
            return None
        return STATE_STARTING, CONNECTING, "the engine is ready; connecting to it"
    if state.phase == FAILED:
        return STATE_STARTING, state.reason, state.message
    return shown, state.reason, state.message


def unavailable_detail(detail: str, state: EngineState | None) -> str:
    """The 4503 error's text: what failed, and the engine's last known state if it adds
    something (in a cluster the operator's condition; locally what ``/readyz`` said)."""
    if state is None or state.ready or not state.message or state.message in detail:
        return detail
    return f"{detail}; last state: {state.reason}: {state.message}"


class StatusFeed:
    """One connection's ``status`` events: sent while it waits for an engine, if opted in.

    The relay says when a wait begins (``wait_began``: the connection is new, or its engine
    was lost) and when frames flow again (``connected``); the feed's own task (``run``) looks
    at the router's state meanwhile and sends on change and every ``interval`` seconds.
    """

    def __init__(
        self,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        current: Callable[[], EngineState | None],
        enabled: bool = False,
        interval: float = STATUS_INTERVAL_SECONDS,
        poll: float = POLL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self.current = current
        self.enabled = enabled
        self.interval = interval
        self.poll = poll
        self._clock = clock
        self._waiting_since: float | None = clock()  # a new connection waits for its engine
        self._quiet = False  # this wait ends without ``ready`` unless a ``status`` was sent
        self._last: tuple[str, str, str] | None = None
        self._last_sent = 0.0
        self._wake = asyncio.Event()

    def wait_began(self, quiet: bool = False) -> None:
        """The connection waits for an engine from now on; ``quiet``: its end is announced
        (``ready``) only if a ``status`` was sent meanwhile (an idle session reconnecting)."""
        self._waiting_since = self._clock()
        self._quiet = quiet
        self._last = None
        self._wake.set()

    def peek(self, text: str) -> None:
        """Look for the ``options`` opt-in in a client frame, only while waiting."""
        if self._waiting_since is None:
            return
        events = options_events(text)
        if events is not None and events != self.enabled:
            self.enabled = events
            self._wake.set()

    async def connected(self) -> None:
        """Frames are relayed to an engine: a waiting, opted-in client hears ``ready``."""
        since, self._waiting_since = self._waiting_since, None
        if since is None or not self.enabled or (self._quiet and self._last is None):
            return
        state = self.current()
        reason = state.reason if state and client_state(state.reason) == STATE_READY else None
        reason = reason or LOCAL_READY
        await self._send(
            status_event(STATE_READY, reason, "the tutor's engine is ready", self._clock() - since)
        )

    async def run(self) -> None:
        """Send the waiting client's events until cancelled (with the connection)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll):
                    await self._wake.wait()
            self._wake.clear()
            await self.tick()

    async def tick(self) -> None:
        """One look at the engine's state; an event if it changed or the interval passed."""
        since = self._waiting_since
        if since is None or not self.enabled:
            return
        now = self._clock()
        view = waiting_view(self.current(), now - since)
        if view is None:
            return
        if view == self._last and now - self._last_sent < self.interval:
            return
        self._last, self._last_sent = view, now
        await self._send(status_event(*view, now - since))
