"""Pure decisions about time and capacity: no I/O, no clocks of their own."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def expired_sessions(last_activity: Mapping[str, float], now: float, timeout: float) -> list[str]:
    """Ids of the sessions whose last activity is at least ``timeout`` seconds old."""
    return [sid for sid, seen in last_activity.items() if now - seen >= timeout]


def engine_is_dead(
    alive: bool, failing_since: float | None, now: float, liveness_timeout: float
) -> bool:
    """Whether an engine should be replaced: its process is gone, or it has failed every
    health check for ``liveness_timeout`` seconds (one slow answer is not death)."""
    if not alive:
        return True
    return failing_since is not None and now - failing_since >= liveness_timeout


def has_capacity(active: int, maximum: int) -> bool:
    """Whether one more session fits under the limit."""
    return active < maximum


@dataclass(frozen=True)
class IdleDecision:
    """Which engines to stop now, and since when each remaining engine has been idle."""

    stop: list[int]
    idle_since: dict[int, float]


def idle_engines(
    running: Iterable[int],
    idle_since: Mapping[int, float],
    busy_tutors: set[int],
    now: float,
    idle_timeout: float,
) -> IdleDecision:
    """Engines with no sessions for ``idle_timeout`` are stopped; busy ones reset their clock."""
    stop: list[int] = []
    still_idle: dict[int, float] = {}
    for tutor in running:
        if tutor in busy_tutors:
            continue
        since = idle_since.get(tutor, now)
        if now - since >= idle_timeout:
            stop.append(tutor)
        else:
            still_idle[tutor] = since
    return IdleDecision(stop=stop, idle_since=still_idle)
