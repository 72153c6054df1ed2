"""The saga designs behind one interface (`SagaDesign`), and the factory the service and tests use.

* `orchestration` (orchestration.py): a durable orchestrator drives core.py's step machine; the
  saga log is `sagas.orders` in the main database; recovery resumes every unfinished saga.
* `choreography` (choreography.py): participants react to events through transactional outboxes
  relayed to Redis Streams.
* `twopc` (twopc.py): two-phase commit across the three databases, with a coordinator log.
* `unsafe` (orchestration.py, `DualWrites`): DELIBERATELY UNSAFE. Writes straight to the three
  databases with no log and no compensation, so the checker (invariants.py) can be seen to catch it.

## The interface every design implements

    design = make_design(name, deps)      # nothing runs yet
    await design.open()                   # recover once, then start background work
    record = await design.start(order, key, now_us)
    await design.recover()                # also: periodically, from open()'s background work
    await design.settle(timeout_s)        # tests and the live harness: wait for quiet
    await design.close()

* `name: str`: the design's name, as `SAASLAB_SAGA` spells it; it is each order's `design`.
* `open() -> None`: runs `recover()` once, then starts the design's background tasks (drivers,
  the recovery loop every `settings.saga_recovery_interval_s`, relays, consumers) on the running
  loop. Its migrations must already be applied (wiring.py's `MIGRATIONS` on the main database,
  `participants.ensure_databases` on the three others; `Participants.open` does the latter).
* `start(order: core.Order, key: str, now_us: int) -> orders.OrderRecord`: durably records the
  order as `pending` in `sagas.orders` (`deps.orders.create`; idempotent by (tenant, `key`): the
  same key returns the first order, `created` False, and starts nothing) and sets its saga going
  in the background. It returns once the order is recorded, never waiting for the saga's end: the
  route answers 202. A crash after it returned loses nothing: recovery finds the order.
* `recover() -> int`: resumes every unfinished saga found in durable state whose time has come
  (`deps.orders.due(now)`; 2PC also: in-doubt prepared transactions; choreography also: pending
  stream entries past the visibility timeout), and returns how many it resumed. Safe to run at any
  time, concurrently with drivers and with other workers' recovery (participant operations are
  idempotent, and `orders.save` is guarded by the row's version).
* `settle(timeout_s: float) -> bool`: waits until no saga this process started or resumed is
  still running in it (each has finished or is parked waiting for a retry); True if it got there
  in time.
* `close() -> None`: stops background work. Sagas in flight are abandoned to recovery, as a crash
  would leave them.

Every design keeps its orders' `status` and `steps` current in `sagas.orders` (`deps.orders.save`,
`core.step_views` for the steps), so `GET /v1/orders` is the same for all. Each marks the fault
points of `core.FAULT_POINTS` with `await deps.faults.before(point)` before an effect and
`deps.faults.after(point)` after it (reference_impl/common/faults.py's `Faults` is such an object;
the in-process crash tests pass one that raises `SimulatedCrash`, a BaseException, at a point).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis

from reference_impl.common.db import Pool
from reference_impl.sagas.core import FAULT_POINTS, Order, SagaPolicy
from reference_impl.sagas.orders import OrderLog, OrderRecord
from reference_impl.sagas.participants import Participants
from saaslab.settings import Settings

DESIGNS = ("orchestration", "choreography", "twopc", "unsafe")


class ArmedFault(Protocol):
    @property
    def mode(self) -> str: ...
    @property
    def delay_ms(self) -> int: ...


class FaultHooks(Protocol):
    """Where lab-mode faults strike: reference_impl/common/faults.py's `Faults`, or a test's stand-in.
    `take` hands an effect with failure modes of its own (the payment provider) the fault armed at a point."""

    async def before(self, point: str) -> None: ...

    def after(self, point: str) -> None: ...

    def take(self, point: str) -> ArmedFault | None: ...


class NoFaults:
    async def before(self, point: str) -> None:
        """Nothing armed."""

    def after(self, point: str) -> None:
        """Nothing armed."""

    def take(self, point: str) -> None:
        """Nothing armed."""


class SimulatedCrash(BaseException):
    """An in-process crash for tests: it unwinds past every `except Exception`, as the process dying would
    end everything; the test then drops the design and recovers from the databases."""


@dataclass
class SagaDeps:
    """What a design is built from."""

    settings: Settings
    pool: Pool
    """The main database: `sagas.orders` and any log of the design's own."""
    participants: Participants
    orders: OrderLog
    policy: SagaPolicy
    faults: FaultHooks
    redis: Redis | None = None
    """choreography's streams."""


class SagaDesign(Protocol):
    name: str

    async def open(self) -> None: ...

    async def start(self, order: Order, key: str, now_us: int) -> OrderRecord: ...

    async def recover(self) -> int: ...

    async def settle(self, timeout_s: float) -> bool: ...

    async def close(self) -> None: ...


def policy_of(settings: Settings) -> SagaPolicy:
    return SagaPolicy.of(step_timeout_s=settings.saga_step_timeout_s, policy=settings.saga_retry_policy,
                         base_ms=settings.saga_retry_base_ms, cap_ms=settings.saga_retry_cap_ms,
                         max_attempts=settings.saga_max_attempts)


def make_design(name: str, deps: SagaDeps) -> SagaDesign:
    """The design called `name` (see the module docstring), not yet open."""
    if name == "orchestration":
        from reference_impl.sagas.orchestration import Orchestrator

        return Orchestrator(deps)
    if name == "unsafe":
        from reference_impl.sagas.orchestration import DualWrites

        return DualWrites(deps)
    if name == "choreography":
        from reference_impl.sagas.choreography import Choreography

        return Choreography(deps)
    if name == "twopc":
        from reference_impl.sagas.twopc import TwoPhaseCommit

        return TwoPhaseCommit(deps)
    raise ValueError(f"unknown saga design {name!r}; choose one of {', '.join(DESIGNS)}")


__all__ = ["DESIGNS", "FAULT_POINTS", "FaultHooks", "NoFaults", "SagaDeps", "SagaDesign", "SimulatedCrash",
           "make_design", "policy_of"]
