"""Why a loading engine pod is not ready yet, in the engine's own words.

The kubelet's readiness probe only keeps a pod not Ready; the reason the engine gives on
``/readyz`` (say ``LLM server http://vllm:8000 unreachable: connection refused``) reaches no
pod field. So the operator asks: every ``interval`` seconds, for each pod that is ``Loading``
(running, not ready, with an IP), one ``GET /readyz`` in the background, bounded by
``timeout``; the ``problem`` it reports is added to the pod's Loading message, which the
TutorEngine's and its waiting TutorSessions' Ready conditions carry (and the gateway passes on
to clients). A pod that does not answer keeps the plain message. ``/readyz`` needs no key; in a
cluster with NetworkPolicies the chart lets the operator in on the engine port.

``loading_detail`` and ``with_detail`` are pure; ``EngineReadiness`` does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx
from tutor_contract.tasks import cancel_and_wait

from . import conditions as c
from .decisions import MESSAGE_CHARS, PodView

log = logging.getLogger(__name__)

LOADING_MESSAGE = "engine is loading its models"
INTERVAL_SECONDS = 5.0
TIMEOUT_SECONDS = 2.0


def loading_detail(body: Any) -> str | None:
    """The ``problem`` of a ``/readyz`` answer (``None``: loading takes its time, or not JSON
    of an engine)."""
    if not isinstance(body, Mapping) or body.get("ready") is True:
        return None
    problem = body.get("problem")
    if not isinstance(problem, str) or not problem.strip():
        return None
    problem = problem.strip()
    return problem if len(problem) <= MESSAGE_CHARS else problem[:MESSAGE_CHARS] + "…"


def with_detail(view: PodView, detail: str | None) -> PodView:
    """A Loading pod's view with the engine's own reason in its message."""
    if view.state != c.LOADING or not detail:
        return view
    return dataclasses.replace(view, message=f"{LOADING_MESSAGE}: {detail}")


@dataclasses.dataclass
class _Seen:
    at: float
    detail: str | None


class EngineReadiness:
    """The last ``/readyz`` problem of each loading pod, refreshed in the background."""

    def __init__(
        self,
        interval: float = INTERVAL_SECONDS,
        timeout: float = TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self._clock = clock
        self._http: httpx.AsyncClient | None = None
        self._seen: dict[str, _Seen] = {}
        self._running: dict[str, asyncio.Task[None]] = {}

    def views(self, pods: Iterable[PodView]) -> list[PodView]:
        """``pods`` with what their engines said lately; asks again those not asked lately."""
        pods = list(pods)
        loading = {p.name: p.endpoint for p in pods if p.state == c.LOADING and p.endpoint}
        for name in [n for n in self._seen if n not in loading]:
            del self._seen[name]
        now = self._clock()
        for name, endpoint in loading.items():
            seen = self._seen.get(name)
            if name in self._running or (seen is not None and now - seen.at < self.interval):
                continue
            task = asyncio.create_task(self._ask(name, str(endpoint)), name=f"readyz {name}")
            self._running[name] = task
            task.add_done_callback(functools.partial(self._running.pop, name))  # pop(name, task)
        return [
            with_detail(p, self._seen[p.name].detail) if p.name in self._seen else p for p in pods
        ]

    async def _ask(self, name: str, endpoint: str) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout)
        detail = None
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._http.get(f"{endpoint}/readyz")
            detail = loading_detail(response.json())
        except (httpx.HTTPError, TimeoutError, ValueError) as exc:
            log.debug("pod %s: /readyz not answered: %r", name, exc)
        self._seen[name] = _Seen(self._clock(), detail)

    async def close(self) -> None:
        await cancel_and_wait(list(self._running.values()))
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.aclose()
