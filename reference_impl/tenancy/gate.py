"""The scheduler gate: the pure schedulers of core.py, driven by asyncio.

`async with gate.slot(tenant_id, plan):` submits a job, waits until the scheduler dispatches it
and releases the slot on exit. Waiting is an asyncio future per job: `release` dispatches the
next jobs and resolves their futures with the grant time. Cancellation-safe: a waiter cancelled
while queued is withdrawn from the queue; one cancelled just after its slot was granted gives
the slot back.

The gate also measures what a slot really costs, the service time the simulation models: each
hold runs from the grant (not from when the waiter resumes, since the slot is already taken) to
the release, and `holds`, `hold_seconds` and `hold_seconds_squared` add them up, so a reader
gets their mean and spread from two readings. `wait_seconds` adds up how long granted requests
queued. A clock read and a few additions per request: cheap enough for the hot path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
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
    def __init__(self, scheduler: Scheduler, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.scheduler = scheduler
        # WFQ weighs tenants by plan; the gate learns each tenant's plan on its first request.
        self._weights = scheduler.weights if isinstance(scheduler, WeightedFairScheduler) else None
        self.waits = 0
        """Requests that found no free slot and had to queue."""
        self.holds = 0
        """Slots given back."""
        self.hold_seconds = 0.0
        """Their holds, grant to release, added up."""
        self.hold_seconds_squared = 0.0
        """The squares of their holds, added up: the spread of the holds, not just their mean."""
        self.wait_seconds = 0.0
        """Time granted requests spent queued, from submit to grant, added up."""
        self._clock = clock

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

    async def acquire(self, tenant_id: str, plan: str) -> float:
        """Wait for a slot; returns the gate-clock time it was granted, which `release` needs."""
        if self._weights is not None and tenant_id not in self._weights:
            self._weights[tenant_id] = PLAN_WEIGHTS.get(plan, 1)
        loop = asyncio.get_running_loop()
        granted = loop.create_future()
        job = Job(tenant=tenant_id, token=granted, arrival_us=round(self._clock() * 1_000_000))
        self.scheduler.submit(job)
        self._dispatch()
        if granted.done():
            return float(granted.result())
        self.waits += 1
        try:
            return float(await granted)
        except BaseException:
            if granted.done() and not granted.cancelled():
                self.release(tenant_id, granted.result())  # granted, but the waiter is gone: hand the slot on
            else:
                granted.cancel()
                self.scheduler.withdraw(job)
            raise

    def release(self, tenant_id: str, granted_at: float) -> None:
        """Give back the slot `acquire` granted at `granted_at`."""
        hold = self._clock() - granted_at
        self.holds += 1
        self.hold_seconds += hold
        self.hold_seconds_squared += hold * hold
        self.scheduler.release(tenant_id)
        self._dispatch()

    def _dispatch(self) -> None:
        scheduler = self.scheduler
        now = self._clock()
        while (job := scheduler.dispatch()) is not None:
            if job.token.done():
                # Its waiter was cancelled between cancel() and withdraw(): free the slot again.
                scheduler.release(job.tenant)
                continue
            self.wait_seconds += now - job.arrival_us / 1_000_000
            job.token.set_result(now)


class _Slot:
    __slots__ = ("_gate", "_tenant_id", "_plan", "_granted_at")

    def __init__(self, gate: Gate, tenant_id: str, plan: str) -> None:
        self._gate = gate
        self._tenant_id = tenant_id
        self._plan = plan
        self._granted_at = 0.0

    async def __aenter__(self) -> None:
        self._granted_at = await self._gate.acquire(self._tenant_id, self._plan)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._gate.release(self._tenant_id, self._granted_at)
