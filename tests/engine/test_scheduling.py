"""Fair sharing of an engine: FIFO slots, one turn per session, slots held through threads."""

from __future__ import annotations

import asyncio

import pytest
from tutor_engine.scheduling import FairSlots, TurnScheduler, run_holding

pytestmark = pytest.mark.unit


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_slots_are_granted_first_come_first_served() -> None:
    slots = FairSlots(1)
    order: list[int] = []
    await slots.acquire()

    async def waiter(i: int) -> None:
        async with slots.hold():
            order.append(i)

    waiters = [asyncio.create_task(waiter(i)) for i in range(4)]
    await settle()
    assert slots.waiting == 4
    slots.release()
    # A newcomer arriving while the slot passes along still queues behind the waiters.
    late = asyncio.create_task(waiter(99))
    await asyncio.gather(*waiters, late)
    assert order == [0, 1, 2, 3, 99]
    assert (slots.in_use, slots.waiting) == (0, 0)


async def held_with_two_waiting() -> tuple[FairSlots, asyncio.Task[None], asyncio.Task[None]]:
    """A one-slot FairSlots, held, and two waiters queued for it in order."""
    slots = FairSlots(1)
    await slots.acquire()
    first = asyncio.create_task(slots.acquire())
    second = asyncio.create_task(slots.acquire())
    await settle()
    return slots, first, second


async def test_a_cancelled_waiter_gives_up_its_place() -> None:
    slots, first, second = await held_with_two_waiting()
    first.cancel()
    await settle()
    assert slots.waiting == 1  # the cancelled one no longer counts, though still in the heap
    slots.release()
    await asyncio.wait_for(second, 5)
    assert (slots.in_use, slots.waiting) == (1, 0)
    slots.release()
    assert slots.in_use == 0


async def test_a_waiter_cancelled_as_it_is_granted_passes_the_slot_on() -> None:
    slots, first, second = await held_with_two_waiting()
    assert slots.waiting == 2
    slots.release()  # granted to first, which has not run yet
    first.cancel()
    await settle()
    assert first.cancelled()
    await asyncio.wait_for(second, 5)
    assert (slots.in_use, slots.waiting) == (1, 0)
    slots.release()
    assert (slots.in_use, slots.waiting) == (0, 0)
    await slots.acquire()  # the fast path is open again
    assert slots.in_use == 1


async def test_a_session_runs_one_turn_at_a_time_and_sessions_interleave() -> None:
    scheduler = TurnScheduler(max_concurrent=1)
    log: list[str] = []
    gate = asyncio.Event()

    async def turn(session: str, name: str) -> None:
        async with scheduler.turn(session):
            log.append(f"start {name}")
            await gate.wait()
            log.append(f"end {name}")

    # Session a queues three turns before b asks for one: b still gets the second slot.
    tasks = [asyncio.create_task(turn("a", f"a{i}")) for i in range(3)]
    await settle()
    tasks.append(asyncio.create_task(turn("b", "b0")))
    await settle()
    assert log == ["start a0"]
    assert (scheduler.running, scheduler.waiting) == (1, 1)  # b waits for a slot; a1, a2 for a
    gate.set()
    await asyncio.gather(*tasks)
    assert [e for e in log if e.startswith("start")] == [
        "start a0",
        "start b0",
        "start a1",
        "start a2",
    ]
    assert scheduler._sessions == {}


async def test_two_slots_let_two_sessions_run_together_but_never_one_session_twice() -> None:
    scheduler = TurnScheduler(max_concurrent=2)
    running: dict[str, int] = {"a": 0, "b": 0}
    most = {"a": 0, "b": 0, "total": 0}

    async def turn(session: str) -> None:
        async with scheduler.turn(session):
            running[session] += 1
            most[session] = max(most[session], running[session])
            most["total"] = max(most["total"], sum(running.values()))
            await asyncio.sleep(0.001)
            running[session] -= 1

    await asyncio.gather(*(turn(s) for s in "ab" * 10))
    assert most == {"a": 1, "b": 1, "total": 2}


async def test_a_slot_is_held_until_the_work_ends_even_if_its_caller_is_cancelled() -> None:
    slots = FairSlots(1)
    release = asyncio.Event()

    async def work() -> str:
        await release.wait()  # like a decode in a thread: it goes on after a cancel
        return "done"

    caller = asyncio.create_task(run_holding(slots, work()))
    await settle()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert slots.in_use == 1  # the work still runs
    release.set()
    await settle()
    assert slots.in_use == 0
    assert await run_holding(slots, work()) == "done"


async def test_work_that_fails_releases_its_slot_and_raises() -> None:
    slots = FairSlots(1)

    async def broken() -> None:
        raise ValueError("bad audio")

    with pytest.raises(ValueError, match="bad audio"):
        await run_holding(slots, broken())
    assert slots.in_use == 0
