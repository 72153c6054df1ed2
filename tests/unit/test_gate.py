"""The asyncio scheduler gate: grant order, exact slot accounting, cancellation at every moment."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from reference_impl.tenancy.core import Job, make_scheduler
from reference_impl.tenancy.gate import Gate

DESIGNS = ("fifo", "bulkhead", "wfq")


def gate_for(design: str, slots: int) -> Gate:
    return Gate(make_scheduler(design, slots, per_tenant=slots))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize("design", DESIGNS)
async def test_cancelled_waiters_leave_the_queue_and_leak_no_slot(design: str) -> None:
    gate = gate_for(design, 2)
    held = [await gate.acquire("a", "pro"), await gate.acquire("a", "pro")]
    granted: list[int] = []

    async def waiter(i: int) -> None:
        held.append(await gate.acquire("a", "pro"))
        granted.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
    await settle()
    assert (gate.busy, gate.queued(), gate.waits) == (2, 5, 5)

    for i in (1, 2, 4):
        tasks[i].cancel()
    await settle()
    assert all(tasks[i].cancelled() for i in (1, 2, 4))
    assert (gate.busy, gate.queued()) == (2, 2)

    gate.release("a", held.pop(0))
    await settle()
    assert granted == [0] and (gate.busy, gate.queued()) == (2, 1)
    gate.release("a", held.pop(0))
    await settle()
    assert granted == [0, 3] and (gate.busy, gate.queued()) == (2, 0)
    gate.release("a", held.pop(0))
    gate.release("a", held.pop(0))
    assert (gate.busy, gate.queued(), gate.holds, held) == (0, 0, 4, [])


async def test_a_waiter_cancelled_after_its_grant_hands_the_slot_on() -> None:
    gate = gate_for("fifo", 1)
    a_granted = await gate.acquire("a", "free")
    first = asyncio.create_task(gate.acquire("b", "free"))
    second = asyncio.create_task(gate.acquire("c", "free"))
    await settle()
    assert gate.queued() == 2

    gate.release("a", a_granted)  # grants `first` its slot; it has not resumed yet...
    first.cancel()     # ...and is cancelled before it does
    await settle()
    assert first.cancelled()
    assert second.done() and not second.cancelled()
    assert (gate.busy, gate.queued()) == (1, 0)
    assert gate.scheduler.in_flight == {"a": 0, "b": 0, "c": 1}  # type: ignore[attr-defined]
    gate.release("c", second.result())
    assert gate.busy == 0
    assert gate.holds == 3  # a, b's slot handed on when its waiter was gone, and c


async def test_slot_context_releases_on_error_and_on_cancellation() -> None:
    gate = gate_for("fifo", 1)
    with pytest.raises(RuntimeError):
        async with gate.slot("a", "pro"):
            raise RuntimeError("boom")
    assert gate.busy == 0

    entered = asyncio.Event()

    async def hold() -> None:
        async with gate.slot("a", "pro"):
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(hold())
    await entered.wait()
    assert gate.busy == 1
    task.cancel()
    await settle()
    assert (gate.busy, gate.queued()) == (0, 0)


async def test_wfq_gate_weighs_tenants_by_plan() -> None:
    gate = gate_for("wfq", 1)
    blocker_granted = await gate.acquire("blocker", "free")
    order: list[str] = []

    async def request(tenant: str, plan: str) -> None:
        async with gate.slot(tenant, plan):
            order.append(tenant)

    # Equal backlogs; enterprise (weight 4) should be served four times as often as free (weight 1).
    tasks = [asyncio.create_task(request(t, p)) for _ in range(8) for t, p in (("ent", "enterprise"), ("free", "free"))]
    await settle()
    gate.release("blocker", blocker_granted)
    await asyncio.gather(*tasks)
    assert gate.scheduler.weights == {"blocker": 1, "ent": 4, "free": 1}  # type: ignore[attr-defined]
    assert order[:5].count("ent") == 4
    assert (gate.busy, gate.queued()) == (0, 0)


def test_withdraw_takes_back_only_queued_jobs() -> None:
    for design in DESIGNS:
        scheduler = make_scheduler(design, 1)
        running, queued = Job("a", token=object(), arrival_us=0), Job("a", token=object(), arrival_us=1)
        scheduler.submit(running)
        scheduler.submit(queued)
        twin = dataclasses.replace(queued)  # equal field by field, but not the queued job
        assert twin == queued
        assert scheduler.dispatch() is running
        assert not scheduler.withdraw(running)
        assert not scheduler.withdraw(twin)
        assert scheduler.withdraw(queued)
        assert scheduler.queued() == 0 and scheduler.dispatch() is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_gate_measures_slot_holds_and_queue_waits_exactly() -> None:
    clock = FakeClock()
    gate = Gate(make_scheduler("fifo", 2), clock=clock)
    a = await gate.acquire("a", "pro")                 # t=100: a holds a slot
    clock.now = 101.0
    b = await gate.acquire("b", "pro")                 # t=101: b holds the other
    clock.now = 102.0
    c = asyncio.create_task(gate.acquire("c", "pro"))  # t=102: c queues
    await settle()
    assert (a, b, gate.holds, gate.hold_seconds, gate.wait_seconds) == (100.0, 101.0, 0, 0.0, 0.0)

    clock.now = 104.5
    gate.release("a", a)                              # a held 4.5 s; c waited 2.5 s and gets the slot
    clock.now = 105.0                                 # c resumes late, but its slot was taken at 104.5
    assert await c == 104.5
    clock.now = 106.0
    gate.release("b", b)                              # b held 5 s
    clock.now = 107.0
    async with gate.slot("d", "pro"):                 # d holds 1 s, through the context manager
        clock.now = 108.0
    gate.release("c", c.result())                     # c held 3.5 s
    assert (gate.holds, gate.wait_seconds) == (4, 2.5)
    assert gate.hold_seconds == 4.5 + 5 + 1 + 3.5
    assert gate.hold_seconds_squared == 4.5**2 + 5**2 + 1**2 + 3.5**2


async def test_a_cancelled_waiter_holds_nothing_and_counts_no_wait() -> None:
    clock = FakeClock()
    gate = Gate(make_scheduler("fifo", 1), clock=clock)
    a = await gate.acquire("a", "pro")
    waiter = asyncio.create_task(gate.acquire("b", "pro"))
    await settle()
    clock.now = 103.0
    waiter.cancel()
    await settle()
    clock.now = 104.0
    gate.release("a", a)
    assert (gate.holds, gate.hold_seconds, gate.wait_seconds, gate.busy) == (1, 4.0, 0.0, 0)
