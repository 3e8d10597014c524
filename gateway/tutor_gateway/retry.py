"""Back-off for the gateway's retry loops: tenacity's wait strategies, one policy per loop."""

from __future__ import annotations

from tenacity import AsyncRetrying, RetryCallState, wait_exponential, wait_random_exponential
from tenacity.wait import wait_base


def jittered(initial: float, maximum: float) -> wait_base:
    """The n-th delay uniform in [d/2, d], d = min(maximum, initial * 2**n) ("equal jitter")."""
    half = wait_exponential(multiplier=initial / 2, max=maximum / 2)
    return half + wait_random_exponential(multiplier=initial / 2, max=maximum / 2)


class Backoff:
    """``wait``'s delays for a loop that is more than one call retried: ``next`` after each
    failure, ``reset`` after a success."""

    def __init__(self, wait: wait_base) -> None:
        self.wait, self.failures = wait, 0
        self._state: RetryCallState | None = None  # made at the first failure (~1 KiB)

    def next(self) -> float:
        self.failures += 1
        if self._state is None:
            self._state = RetryCallState(AsyncRetrying(wait=self.wait), None, (), {})
        self._state.attempt_number = self.failures
        return self.wait(self._state)

    def reset(self) -> None:
        self.failures = 0
