"""The scheduler gate: the pure schedulers of core.py, driven by asyncio.

`async with gate.slot(tenant_id, plan):` submits a job, waits until the scheduler dispatches it
and releases the slot on exit. Waiting is an asyncio future per job: `release` dispatches the
next jobs and resolves their futures. Cancellation-safe: a waiter cancelled while queued is
withdrawn from the queue; one cancelled just after its slot was granted gives the slot back.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from reference_impl.tenancy.core import (
    PLAN_WEIGHTS,
    Job,
    Scheduler,
    WeightedFairScheduler,
    make_scheduler,
)
from saaslab.settings import Settings


class Gate:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        # WFQ weighs tenants by plan; the gate learns each tenant's plan on its first request.
        self._weights = scheduler.weights if isinstance(scheduler, WeightedFairScheduler) else None
        self.waits = 0
        """Requests that found no free slot and had to queue."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Gate:
        return cls(make_scheduler(settings.scheduler, settings.scheduler_slots,
                                  per_tenant=settings.bulkhead_per_tenant))

    @property
    def busy(self) -> int:
        return self.scheduler.busy

    def queued(self) -> int:
        return self.scheduler.queued()

    def slot(self, tenant_id: str, plan: str) -> _Slot:
        return _Slot(self, tenant_id, plan)

    async def acquire(self, tenant_id: str, plan: str) -> None:
        if self._weights is not None and tenant_id not in self._weights:
            self._weights[tenant_id] = PLAN_WEIGHTS.get(plan, 1)
        loop = asyncio.get_running_loop()
        granted = loop.create_future()
        job = Job(tenant=tenant_id, token=granted, arrival_us=int(loop.time() * 1_000_000))
        self.scheduler.submit(job)
        self._dispatch()
        if granted.done():
            return
        self.waits += 1
        try:
            await granted
        except BaseException:
            if granted.done() and not granted.cancelled():
                self.release(tenant_id)  # granted, but the waiter is gone: hand the slot on
            else:
                granted.cancel()
                self.scheduler.withdraw(job)
            raise

    def release(self, tenant_id: str) -> None:
        self.scheduler.release(tenant_id)
        self._dispatch()

    def _dispatch(self) -> None:
        scheduler = self.scheduler
        while (job := scheduler.dispatch()) is not None:
            if job.token.done():
                # Its waiter was cancelled between cancel() and withdraw(): free the slot again.
                scheduler.release(job.tenant)
                continue
            job.token.set_result(None)


class _Slot:
    __slots__ = ("_gate", "_tenant_id", "_plan")

    def __init__(self, gate: Gate, tenant_id: str, plan: str) -> None:
        self._gate = gate
        self._tenant_id = tenant_id
        self._plan = plan

    async def __aenter__(self) -> None:
        await self._gate.acquire(self._tenant_id, self._plan)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._gate.release(self._tenant_id)
