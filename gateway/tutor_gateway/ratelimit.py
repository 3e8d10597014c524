"""Rate limits: leaky buckets by key (``aiolimiter``), and the REST middleware that applies
MAX_REQUESTS_PER_MINUTE.

A bucket holds up to ``burst`` units and drains at ``rate`` per second; a request that would
overflow it is refused and not counted. A bucket untouched for ``burst / rate`` seconds has
drained empty, so it is forgotten then (a fresh one is the same); at most ``max_keys`` are
kept, so memory is bounded whatever keys clients make up (past it the least recently used are
forgotten early, which only ever lets a client through, never refuses one).
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

from aiolimiter import AsyncLimiter
from cachetools import TTLCache
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .admission import Refusal

log = logging.getLogger("tutor_gateway.ratelimit")

MAX_KEYS = 100_000
LIMITED_PREFIXES = ("/v1/", "/mgmt/v1/")  # the management API; health, metrics, docs are not


class KeyedLimiter:
    """One leaky bucket per key: ``burst`` at once, ``rate`` per second on average."""

    def __init__(self, rate: float, burst: float, max_keys: int = MAX_KEYS) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.period = burst / rate  # seconds to drain a full bucket
        self._buckets: TTLCache[str, AsyncLimiter] = TTLCache(max_keys, self.period)

    @property
    def retry_after(self) -> int:
        """Seconds until a refused key surely has room for one more (a full bucket drains one
        unit in ``1 / rate`` seconds), at least 1."""
        return max(1, math.ceil(1 / self.rate))

    async def acquire(self, key: str, amount: float = 1) -> bool:
        """Count ``amount`` units for ``key`` if they fit now; False (not counted) if they do
        not. An amount over ``burst`` never fits."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = AsyncLimiter(self.burst, self.period)
        self._buckets[key] = bucket  # kept another ``period`` from now
        if amount > self.burst or not bucket.has_capacity(amount):
            return False
        await bucket.acquire(amount)  # there is room: returns at once
        return True

    def __len__(self) -> int:
        return len(self._buckets)


def message_rate_problem(rate: float, burst: int) -> str:
    """The ``error`` text for a WebSocket message over MAX_MESSAGES_PER_SECOND."""
    return (
        f"Too many messages: more than {rate:g} per second (burst {burst}, "
        "MAX_MESSAGES_PER_SECOND); this message was not forwarded"
    )


def audio_rate_problem(rate: float, burst: int) -> str:
    """The ``error`` text for a binary (streamed audio) frame over MAX_AUDIO_BYTES_PER_SECOND."""
    return (
        f"Too much audio: more than {rate:g} bytes per second (burst {burst}, "
        "MAX_AUDIO_BYTES_PER_SECOND); this audio frame was not forwarded"
    )


def client_key(scope: Scope, by_key: bool) -> str:
    """Whom a request counts against: with management API keys configured (``by_key``; the
    access check in front has accepted the key), its ``Authorization`` value as a hash, never
    the key itself; else the client's address (the peer, or the ``X-Forwarded-For`` uvicorn
    trusts from FORWARDED_ALLOW_IPS), so that made-up headers do not make fresh buckets."""
    if by_key:
        for name, value in scope.get("headers") or ():
            if name == b"authorization" and value:
                return "key:" + hashlib.sha256(value).hexdigest()[:32]
    client = scope.get("client")
    return "ip:" + (client[0] if client else "unknown")


class RequestRateLimit:
    """ASGI middleware: MAX_REQUESTS_PER_MINUTE per client on the management API (``/v1``,
    ``/mgmt/v1``); over it, 429 with ``Retry-After`` and a ``detail`` naming the limit.

    It sits inside the access check (tutor_gateway.auth), so with keys configured only
    accepted keys get a bucket; before the body limit, so a refused request reads no body.
    """

    def __init__(self, app: ASGIApp, per_minute: int) -> None:
        self.app = app
        self.per_minute = per_minute
        self.limiter = KeyedLimiter(per_minute / 60.0, per_minute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(LIMITED_PREFIXES):
            await self.app(scope, receive, send)
            return
        # By key when management API keys are configured (tutor_gateway.auth keeps them).
        by_key = bool(getattr(app_state(scope, "management_keys"), "enabled", False))
        if await self.limiter.acquire(client_key(scope, by_key)):
            await self.app(scope, receive, send)
            return
        refusal = Refusal(
            "MAX_REQUESTS_PER_MINUTE",
            f"Too many requests: more than {self.per_minute} per minute from this client "
            "(MAX_REQUESTS_PER_MINUTE)",
            self.limiter.retry_after,
        )
        gateway = app_state(scope, "gateway")  # there once the lifespan has started
        if gateway is not None:
            gateway.metrics.limited.labels(refusal.label).inc()
        log.info("request refused: %s", refusal.detail)
        response = JSONResponse(
            {"detail": refusal.detail},
            status_code=refusal.status,
            headers={"Retry-After": str(refusal.retry_after)},
        )
        await response(scope, receive, send)


def app_state(scope: Scope, name: str) -> Any:
    """``app.state.<name>`` of the app serving ``scope``, or None (not set, no such app)."""
    return getattr(getattr(scope.get("app"), "state", None), name, None)
