"""tutor_contract.tasks: ending background tasks."""

from __future__ import annotations

import asyncio

import pytest
from tutor_contract.tasks import cancel_and_wait

pytestmark = pytest.mark.unit


async def test_every_task_is_cancelled_and_finished_before_it_returns() -> None:
    cleaned: list[str] = []

    async def worker(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits
            cleaned.append(name)

    async def failed() -> None:
        raise RuntimeError("its own failure")

    tasks = [asyncio.create_task(worker("a")), asyncio.create_task(worker("b"))]
    broken = asyncio.create_task(failed())
    done = asyncio.create_task(asyncio.sleep(0))
    await done  # the others have started too
    await cancel_and_wait([*tasks, None, broken, done])
    assert sorted(cleaned) == ["a", "b"]
    assert all(t.cancelled() for t in tasks)
    assert isinstance(broken.exception(), RuntimeError) and done.result() is None


async def test_nothing_to_end() -> None:
    await cancel_and_wait([])
    await cancel_and_wait([None])
