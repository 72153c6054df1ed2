"""A SimPy server whose admission decisions are made by the service's own scheduler code.

The twin rule (docs/design.md): `Server` does not model FIFO or fair queuing itself. It owns `slots`
workers through a scheduler (`saaslab.scheduling.Scheduler`; the designs are in
reference_impl/tenancy/core.py) and drives it exactly as the service does: `submit` a `Job` whose token is a SimPy event when a request
arrives, and whenever a request arrives or a slot frees, `dispatch` until it returns None and
wake the requests it chose. Only the clock differs (`env.now`, integer microseconds).

It is also a `FaultTarget`: see `scenarios.kernel.faults` for what latency, pause and crash do.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from saaslab.scheduling import Job, Scheduler
from scenarios.kernel import US_PER_MS
from scenarios.kernel.faults import Fault

ServiceTime = Callable[[str], int]
"""Service time in µs of one request of a tenant."""


def service_time(base_ms: float, overhead_ms: float, rng: np.random.Generator) -> ServiceTime:
    """A fixed `base_ms` per request plus an exponential overhead of mean `overhead_ms`.

    The overhead stands for the jitter a real handler has (GC, scheduling, I/O variance); with
    `overhead_ms=0` service is deterministic, which makes waiting times computable by hand.
    """
    base_us = round(base_ms * US_PER_MS)
    overhead_us = overhead_ms * US_PER_MS
    if overhead_us <= 0:
        return lambda _tenant: base_us
    return lambda _tenant: base_us + round(rng.exponential(overhead_us))


@dataclass(frozen=True, slots=True)
class Served:
    """The fate of one request. `start_us` is None when it never got a slot."""

    tenant: str
    arrival_us: int
    start_us: int | None
    end_us: int
    ok: bool

    @property
    def wait_us(self) -> int | None:
        return None if self.start_us is None else self.start_us - self.arrival_us

    @property
    def latency_us(self) -> int:
        return self.end_us - self.arrival_us


class Server:
    """`slots` workers admitted by a scheduler; `request(tenant)` is a process yielding `Served`.

    `new_scheduler` builds the scheduler (again after a crash, which loses all queued state).
    `cost_us` is the nominal cost a request declares to the scheduler (weighted fair queuing
    tags); the actual service time comes from `service_us`, as in production, where the cost is
    known before the request runs but its duration only after.
    """

    def __init__(self, env: simpy.Environment, new_scheduler: Callable[[], Scheduler],
                 service_us: ServiceTime, *, name: str = "server", cost_us: int = 1000) -> None:
        self.env = env
        self.name = name
        self.cost_us = cost_us
        self.scheduler = new_scheduler()
        self._new_scheduler = new_scheduler
        self._service_us = service_us
        self._active: set[simpy.Process] = set()
        self._latency_faults: list[Fault] = []
        self._pauses = 0
        self._resumed = env.event()
        self._crashes = 0

    def request(self, tenant: str) -> simpy.Process:
        return self.env.process(self._handle(tenant))

    def _handle(self, tenant: str) -> Generator[simpy.Event, Any, Served]:
        env = self.env
        arrival = int(env.now)
        if self._crashes:
            return Served(tenant, arrival, None, arrival, ok=False)
        granted = env.event()
        self.scheduler.submit(Job(tenant=tenant, token=granted, arrival_us=arrival, cost_us=self.cost_us))
        me = env.active_process
        self._active.add(me)
        start: int | None = None
        try:
            self._pump()
            yield granted
            start = int(env.now)
            yield env.timeout(self._service_time(tenant))
            while self._pauses:
                yield self._resumed
        except simpy.Interrupt:
            return Served(tenant, arrival, start, int(env.now), ok=False)
        finally:
            self._active.discard(me)
        self.scheduler.release(tenant)
        self._pump()
        return Served(tenant, arrival, start, int(env.now), ok=True)

    def _pump(self) -> None:
        """Give every free slot to the request the scheduler picks (none while paused)."""
        if self._pauses:
            return
        while (job := self.scheduler.dispatch()) is not None:
            job.token.succeed()

    def _service_time(self, tenant: str) -> int:
        t = float(self._service_us(tenant))
        for f in self._latency_faults:
            t = t * float(f.params.get("factor", 1.0)) + float(f.params.get("extra_ms", 0.0)) * US_PER_MS
        return round(t)

    def fault_started(self, fault: Fault) -> None:
        if fault.kind == "latency":
            self._latency_faults.append(fault)
        elif fault.kind == "pause":
            # Work in progress finishes no earlier than the resume: a stopped process makes no progress.
            if self._pauses == 0:
                self._resumed = self.env.event()
            self._pauses += 1
        else:
            self._crashes += 1
            self.scheduler = self._new_scheduler()
            for proc in list(self._active):
                proc.interrupt(fault.name)

    def fault_ended(self, fault: Fault) -> None:
        if fault.kind == "latency":
            self._latency_faults.remove(fault)
        elif fault.kind == "pause":
            self._pauses -= 1
            if self._pauses == 0:
                self._resumed.succeed()
                self._pump()
        else:
            self._crashes -= 1
