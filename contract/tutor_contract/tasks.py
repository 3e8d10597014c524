"""Ending background tasks: cancel them, then wait until each has really finished."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """Cancel every task (``None`` entries are skipped) and wait for all of them to finish.

    Their results and exceptions are consumed (an ended task's failure was its own to log),
    so nothing is reported as "never retrieved". Cancelling the caller meanwhile still
    cancels it; the tasks were already told to stop.
    """
    pending = [task for task in tasks if task is not None]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
