"""The service's worker processes in the model: request slots admitted by the service's FIFO scheduler,
and crashes at the payment's checkpoints."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import simpy

from reference_impl.tenancy.core import Job, make_scheduler
from scenarios.idempotency.messages import RESET, Answer
from scenarios.idempotency.plan import TENANT

if TYPE_CHECKING:
    from scenarios.idempotency.lab import Attempt, Lab


class Crashed(Exception):
    """The worker process died at a checkpoint."""


class _Ticket:
    """A Job's token: granted at once when a slot is free, else an event to wait for (one event fewer)."""

    __slots__ = ("granted", "event")

    def __init__(self) -> None:
        self.granted = False
        self.event: simpy.Event | None = None


class Worker:
    """One service worker process: `slots` slots admitted by the service's FIFO scheduler."""

    def __init__(self, lab: Lab, index: int) -> None:
        self.lab = lab
        self.env = lab.env
        self.index = index
        self.up = True
        self.generation = 0
        self.scheduler = make_scheduler("fifo", lab.setup.slots)
        self.armed: set[str] = set()
        """Checkpoints a one-shot crash is armed at (`Setup.crash_at`)."""
        self._active: dict[simpy.Process, None] = {}
        """Attempts on this worker, in arrival order (a dict: a crash interrupts them in a reproducible order)."""

    @property
    def busy(self) -> bool:
        return bool(self._active)

    def submit(self, attempt: Attempt, answered: simpy.Event) -> None:
        self.env.process(self._handle(attempt, answered))

    def _handle(self, attempt: Attempt, answered: simpy.Event) -> Generator[simpy.Event, Any, None]:
        env, lab = self.env, self.lab
        generation = self.generation
        ticket = _Ticket()
        self.scheduler.submit(Job(tenant=TENANT, token=ticket, arrival_us=int(env.now)))
        me = env.active_process
        assert me is not None
        self._active[me] = None
        started = False
        got: Answer | str
        try:
            self._pump()
            if not ticket.granted:
                ticket.event = env.event()
                yield ticket.event
            started = True
            s = lab.setup
            yield lab.hop(s.handler_ms + lab.service_rng.expovariate(1.0 / s.handler_overhead_ms))
            got = yield from lab.store.serve(self, attempt, lab.now_us())
        except (simpy.Interrupt, Crashed):
            got = RESET
        finally:
            self._active.pop(me, None)
        if not answered.triggered:
            answered.succeed(got)
        if started and generation == self.generation:
            self.scheduler.release(TENANT)
            self._pump()

    def _pump(self) -> None:
        while (job := self.scheduler.dispatch()) is not None:
            job.token.granted = True
            if job.token.event is not None:
                job.token.event.succeed()

    def checkpoint(self, point: str) -> None:
        """A named point of the payment's flow (core.CHECKPOINTS): the worker may die here."""
        setup = self.lab.setup
        if point in self.armed:
            self.crash()
            raise Crashed(point)
        if point in setup.crash_points and self.lab.fault_rng.random() < setup.p_crash:
            self.crash()
            raise Crashed(point)

    def crash(self) -> None:
        """Kill the process: every attempt on it is dropped, its queue is lost, it restarts later."""
        self.lab.stats.crashes += 1
        self.up = False
        self.armed.clear()  # faults live in the process: it comes back with none
        self.generation += 1
        self.scheduler = make_scheduler("fifo", self.lab.setup.slots)
        me = self.env.active_process
        for proc in list(self._active):
            if proc is not me:
                proc.interrupt("crash")
        self.env.process(self._restart())

    def _restart(self) -> Generator[simpy.Event, Any, None]:
        yield self.lab.hop(self.lab.setup.restart_ms)
        self.up = True
