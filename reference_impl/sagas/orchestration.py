"""The `orchestration` design (a durable orchestrator) and the `unsafe` one (dual writes), over designs.py's interface.

`Orchestrator`: each saga is driven by a task of this process running core.py's step machine; the
saga log is the order's row in `sagas.orders` (its `state` is `core.SagaState.to_dict()`), saved
after every step's outcome, before the next command runs. A driver holds its saga by a lease: every
save pushes `due_at_us` to `lease` past the moment the saga next needs work (now, or the end of a
retry's wait). Recovery (`recover`, at `open` and every `saga_recovery_interval_s`) resumes each
pending saga whose `due_at_us` has passed, whoever started it: its driver crashed, or its worker
died. Two drivers of one saga (a slow one and its successor) are harmless: every participant
operation is idempotent by step key, and `orders.save` refuses a save from a stale version, which
stops the slower driver.

`DualWrites` (`unsafe`): DELIBERATELY UNSAFE. It calls each step's action once, in order, with no
log, no retry and no compensation: an order refused halfway keeps what it had reserved and charged,
and a crash leaves it pending with its effects forever. It records the order (for GET) and its
final status only. It exists so the checker (invariants.py) can be seen to catch it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from reference_impl.idempotency.payments import FaultMode
from reference_impl.idempotency.provider import ProviderFault
from reference_impl.sagas.core import (
    CHECKOUT,
    FAULT_POINTS,
    PROVIDER_POINT,
    Do,
    Finished,
    Order,
    Outcome,
    SagaState,
    Step,
    Undo,
    Wait,
    apply,
    fault_point,
    next_command,
    start,
    step_views,
)
from reference_impl.sagas.designs import SagaDeps
from reference_impl.sagas.orders import OrderRecord
from reference_impl.sagas.tasks import TaskSet, recover_forever, wall_clock_us

log = logging.getLogger("saaslab.sagas")
US = 1_000_000
LOGGED_POINT = "sagas.orchestrator.logged"
RECOVER_POINT = "sagas.orchestrator.recover"
assert LOGGED_POINT in FAULT_POINTS and RECOVER_POINT in FAULT_POINTS


class Orchestrator:
    name = "orchestration"

    def __init__(self, deps: SagaDeps, *, clock: Callable[[], int] = wall_clock_us) -> None:
        self.deps = deps
        self.clock = clock
        self.lease_us = round(deps.settings.saga_lease_s * US)
        self.drivers = TaskSet()
        self._recovering: asyncio.Task[None] | None = None
        self.resumed = 0
        """Sagas recovery resumed (a metric)."""

    async def open(self) -> None:
        await self.recover()
        self._recovering = asyncio.create_task(
            recover_forever(self.recover, self.deps.settings.saga_recovery_interval_s, self.name))

    async def close(self) -> None:
        await self.drivers.close(self._recovering)

    async def settle(self, timeout_s: float) -> bool:
        return await self.drivers.settle(timeout_s)

    async def start(self, order: Order, key: str, now_us: int) -> OrderRecord:
        state = start(order.id, now_us)
        record, created = await self.deps.orders.create(order, key, self.name, step_views(state), state.to_dict(),
                                                        now_us, due_at_us=now_us + self.lease_us)
        if created:
            self.drivers.spawn(record.id, self._drive(record, fresh=True))
        return record

    async def recover(self) -> int:
        now = self.clock()
        due = [r for r in await self.deps.orders.due(now) if r.id not in self.drivers and r.design == self.name]
        for record in due:
            await self.deps.faults.before(RECOVER_POINT)
            self.drivers.spawn(record.id, self._drive(record))
        self.resumed += len(due)
        return len(due)

    async def _drive(self, record: OrderRecord, *, fresh: bool = False) -> None:
        """Run one saga's step machine to its end, saving its state after every step."""
        if fresh:
            await self.deps.faults.before(LOGGED_POINT)
        assert record.state is not None
        state, version, order = SagaState.from_dict(record.state), record.version, record.order
        if not fresh:  # take the saga over: a save pushes the lease out, and fails if another driver moved it
            version = await self._save(record.id, version, state)
            if version is None:
                return
        while True:
            command = next_command(state, self.clock())
            if isinstance(command, Finished):
                return
            if isinstance(command, Wait):
                await asyncio.sleep(max(0, command.until_us - self.clock()) / US)
                continue
            outcome = await self._run(command, order)
            state = apply(state, outcome, self.clock(), self.deps.policy)
            version = await self._save(record.id, version, state)
            if version is None:
                log.info("saga %s was taken over by another driver", record.id)
                return

    async def _save(self, saga_id: str, version: int, state: SagaState) -> int | None:
        due = (max(state.retry_at_us, self.clock()) + self.lease_us) if not state.terminal else 0
        return await self.deps.orders.save(saga_id, version, state.status, step_views(state), state.to_dict(), due,
                                           state.finished_us)

    async def _run(self, command: Do | Undo, order: Order) -> Outcome:
        return await run_step(self.deps, command.step, order, undo=isinstance(command, Undo))


async def run_step(deps: SagaDeps, step: Step, order: Order, *, undo: bool) -> Outcome:
    """One attempt of a step's action (or compensation) between its fault points, bounded by the step's
    timeout: `ok`, `refused`, or, for anything that leaves the outcome unknown, `error` or `timeout`."""
    before, after = fault_point(step, "before", undo=undo), fault_point(step, "after", undo=undo)
    try:
        async with asyncio.timeout(deps.policy.timeout_us(step) / US):
            await deps.faults.before(before)
            if undo:
                await deps.participants.compensate(step, order)
                result: Outcome = "ok"
            else:
                result = await deps.participants.act(step, order, fault=provider_fault(deps, step))
        # After the effect: a crash, an error or a delay (`before` modes), or a timeout after the effect.
        await deps.faults.before(after)
        deps.faults.after(after)
    except TimeoutError:
        return "timeout"
    except Exception as exc:
        status = getattr(exc, "status", None)
        log.info("saga %s: %s%s failed: %r", order.id, step.name, " (undo)" if undo else "", exc)
        return "timeout" if status == 504 else "error"
    return result


def provider_fault(deps: SagaDeps, step: Step) -> ProviderFault | None:
    """The fault armed at `sagas.charge.provider`, as the lab provider's own failure mode."""
    fault = deps.faults.take(PROVIDER_POINT) if step.name == "charge" else None
    if fault is None or fault.mode not in _PROVIDER_MODES:
        return None
    return ProviderFault(_PROVIDER_MODES[fault.mode], fault.delay_ms)


_PROVIDER_MODES: dict[str, FaultMode] = {"error": "fail", "delay": "slow", "timeout_after_effect": "timeout_after_effect"}


class DualWrites:
    """UNSAFE ON PURPOSE: see the module docstring."""

    name = "unsafe"

    def __init__(self, deps: SagaDeps, *, clock: Callable[[], int] = wall_clock_us) -> None:
        self.deps = deps
        self.clock = clock
        self.drivers = TaskSet()

    async def open(self) -> None:
        """No log, so nothing to recover."""

    async def close(self) -> None:
        await self.drivers.close()

    async def settle(self, timeout_s: float) -> bool:
        return await self.drivers.settle(timeout_s)

    async def recover(self) -> int:
        return 0

    async def start(self, order: Order, key: str, now_us: int) -> OrderRecord:
        record, created = await self.deps.orders.create(order, key, self.name, step_views(start(order.id, now_us)),
                                                        None, now_us)
        if created:
            self.drivers.spawn(record.id, self._write(record))
        return record

    async def _write(self, record: OrderRecord) -> None:
        await self.deps.faults.before(LOGGED_POINT)
        state = start(record.id, record.created_us)
        for step in CHECKOUT:
            outcome = await run_step(self.deps, step, record.order, undo=False)
            state = apply(state, "ok", self.clock(), self.deps.policy) if outcome == "ok" else state
            if outcome != "ok":
                status = "failed"  # and whatever earlier steps did stays done: no compensation
                await self.deps.orders.save(record.id, record.version, status, step_views(state), None, 0,
                                            self.clock())
                return
        await self.deps.orders.save(record.id, record.version, "completed", step_views(state), None, 0, self.clock())
