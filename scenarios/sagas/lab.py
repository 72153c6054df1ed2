"""The simulated lab of one run: the databases and their connections, the SKU row locks, the payment
provider, the process that drives sagas (and its crashes), the orders and their history, and the run
that ties them to a design's driver (drivers.py). The package docstring describes the model.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import simpy

from reference_impl.sagas.core import TERMINAL, Order, Outcome, SagaState, Step, step_key
from reference_impl.sagas.invariants import OrderRow, check
from saaslab.history import History
from saaslab.results import LatencyHistogram
from scenarios.kernel import US_PER_MS, US_PER_S
from scenarios.kernel.workload import arrivals
from scenarios.sagas.plan import EPOCH_US, TENANT, Condition, Orders, Setup, stock_levels, workload
from scenarios.sagas.records import Charge, Records

if TYPE_CHECKING:
    from scenarios.sagas.drivers import Driver
    from scenarios.sagas.results import RunResult

Work = Generator[simpy.Event, Any, Any]
DATABASES = ("orders", "inventory", "payments", "shipping")
"""`orders` is the main database: the saga log, the coordinator log, the order service's outbox."""
STATEMENTS = {"reserve": 3, "release": 3, "commit": 3, "charge": 2, "refund": 2, "schedule": 1, "cancel": 2}
"""Statements of each participant operation between BEGIN and COMMIT (reference_impl/sagas/participants.py);
`charge` calls the provider between its two."""
LOCKING = frozenset({"reserve", "release", "commit"})
"""Operations that lock the order's stock rows (in SKU order) after their first statement."""
TICK_US = 100 * US_PER_MS


@dataclass
class Saga:
    """One order as the lab tracks it: what was asked, what became of it, and the design's durable state."""

    order: Order
    declined: bool
    key: str
    started_us: int
    status: str = "pending"
    finished_us: int | None = None
    state: SagaState | None = None
    """The durable saga state: the orchestrator's log, the 2PC coordinator's, or the last one an event carried."""
    due_us: int = 0
    """orchestration: when recovery may take the saga over (its lease)."""
    decided: bool = False
    """twopc: the commit decision is in the coordinator log."""
    epoch: int = -1
    """The incarnation of the process whose driver holds the saga."""


@dataclass
class Stats:
    messages: int = 0
    events: int = 0
    """choreography: stream entries written (XADDs, duplicates included)."""
    rejected: int = 0
    crashes: list[tuple[int, list[str]]] = field(default_factory=list)
    """(when, the orders pending at that moment) per crash."""
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    lock_hold: LatencyHistogram = field(default_factory=LatencyHistogram)
    in_doubt: LatencyHistogram = field(default_factory=LatencyHistogram)
    in_doubt_max_us: int = 0
    redeliveries: int = 0


class Lab:
    """One simulated run of one design under one fault condition."""

    def __init__(self, design: str, setup: Setup, load_point: float, seed: int, condition: Condition) -> None:
        from scenarios.sagas.drivers import make_driver

        self.env = simpy.Environment()
        self.setup = setup
        self.design = design
        self.load_point = load_point
        self.seed = seed
        self.condition = condition
        self.policy = setup.policy()
        self.fault_rng = random.Random(f"sagas:faults:{seed}:{load_point}:{condition}")
        self.service_rng = random.Random(f"sagas:service:{seed}:{load_point}")
        self.records = Records(TENANT, stock_levels(load_point, setup))
        self.dbs = {db: simpy.Resource(self.env, setup.connections) for db in DATABASES}
        self.locks = {s: simpy.Resource(self.env, 1) for s in self.records.stock}
        self.sagas: dict[str, Saga] = {}
        self.history = History(process="sim")
        self.stats = Stats()
        self.up = True
        self.epoch = 0
        self._live: set[simpy.Process] = set()
        self._arrivals_done = False
        self.driver: Driver = make_driver(design, self)

    # --- clock, costs, faults

    def now_us(self) -> int:
        """The sagas' clock (`core` takes it): a wall-clock instant plus simulated time."""
        return EPOCH_US + int(self.env.now)

    def sleep_until(self, at_us: int) -> simpy.Timeout:
        return self.env.timeout(max(0, at_us - self.now_us()))

    def round_trip(self, n: int = 1) -> Work:
        """`n` statements in a row at a database, each a network round trip plus its execution."""
        self.stats.messages += n
        s = self.setup
        took = sum(s.rtt_ms + self.service_rng.expovariate(1.0 / s.statement_ms) for _ in range(n))
        yield self.env.timeout(round(took * US_PER_MS))

    def redis_trip(self) -> Work:
        self.stats.messages += 1
        yield self.env.timeout(round(self.setup.redis_rtt_ms * US_PER_MS))

    def draw_fault(self) -> str | None:
        """None, 'error' (before the effect) or 'timeout' (after it, the answer lost), while faults run."""
        p = self.condition.failure
        if p <= 0 or self._arrivals_done:
            return None
        u = self.fault_rng.random()
        return None if u >= p else "error" if u < p / 2 else "timeout"

    # --- the process that drives sagas, and its crashes

    def spawn(self, work: Work) -> simpy.Process | None:
        """Run `work` in the driving process (a crash ends it); None while the process is down."""
        if not self.up:
            return None
        return self.env.process(self._guarded(work))

    def _guarded(self, work: Work) -> Work:
        me = self.env.active_process
        self._live.add(me)
        try:
            return (yield from work)
        except simpy.Interrupt:
            return None
        finally:
            self._live.discard(me)

    def _crashes(self) -> Work:
        rate = self.condition.crash
        if rate <= 0:
            return
        rng = random.Random(f"sagas:crashes:{self.seed}:{self.load_point}:{rate}")
        at_us = 0
        while True:
            at_us += round(rng.expovariate(rate) * US_PER_S)
            if at_us >= round(self.setup.duration_s * US_PER_S):
                return
            yield self.env.timeout(at_us - self.env.now)
            if not self.up:
                continue
            self.up = False
            self.epoch += 1
            pending = [s.order.id for s in self.sagas.values() if s.status == "pending"]
            self.stats.crashes.append((int(self.env.now), pending))
            for proc in list(self._live):
                if proc.is_alive:
                    proc.interrupt("crash")
            self.env.process(self._restart())

    def _restart(self) -> Work:
        yield self.env.timeout(round(self.setup.restart_ms * US_PER_MS))
        self.up = True
        for work in self.driver.restarted():
            self.spawn(work)

    # --- participant transactions

    def transaction(self, db: str, operation: str, *, skus: tuple[str, ...] = (), extra: int = 0,
                    effect: Callable[[Charge | None], Any], fault: str | None = None,
                    provider: tuple[Order, str, bool] | None = None, prepare: bool = False) -> Work:
        """BEGIN, the operation's statements (and `extra` more: an inbox and an outbox row), COMMIT (or
        PREPARE TRANSACTION), holding a connection throughout and the SKU locks from the first statement on.
        `effect(charge)` changes the rows when COMMIT returns; a crash or a cancel before that rolls back
        (a provider charge made meanwhile stays: the provider is another company). Returns
        (effect's result, the locks still held: a prepared transaction keeps them); ('error', []) when `fault`
        is 'error'."""
        with self.dbs[db].request() as conn, ExitStack() as held:
            yield conn
            yield from self.round_trip(2)  # BEGIN, the first statement (the upsert of the step key)
            if fault == "error":
                return "error", []
            locks = []
            if operation in LOCKING:
                for s in sorted(skus):
                    req = self.locks[s].request()
                    held.callback(self._unlock, req)
                    locks.append(req)
                    yield req
                    req.granted_us = int(self.env.now)  # type: ignore[attr-defined]
            made = None
            if provider is not None and self.records.charge_known(step_key(provider[0].id, "charge")) is None:
                made = yield from self._provider_call(*provider)
            # The rest of the statements, then COMMIT or PREPARE TRANSACTION.
            yield from self.round_trip(STATEMENTS[operation] + extra)
            result = effect(made)
            if prepare:
                held.pop_all()
                return result, locks
            return result, []

    def _unlock(self, req: simpy.resources.resource.Request) -> None:
        if not req.triggered:
            req.cancel()
            return
        req.resource.release(req)
        self.stats.lock_hold.record_us(int(self.env.now) - getattr(req, "granted_us", int(self.env.now)))

    def unlock_all(self, locks: list) -> None:
        for req in locks:
            self._unlock(req)

    def _provider_call(self, order: Order, token: str, declined: bool) -> Work:
        """The charge happens halfway, in a callback of the provider's own: it stands whatever becomes of the caller."""
        s = self.setup
        latency = round((s.provider_ms + self.service_rng.expovariate(1.0 / s.provider_jitter_ms)) * US_PER_MS)
        made: list[Charge] = []
        halfway = self.env.timeout(latency // 2)
        halfway.callbacks.append(lambda _e: made.append(self.records.provider_charge(order, token, declined)))
        self.stats.messages += 1
        yield halfway
        yield self.env.timeout(latency - latency // 2)
        return made[0]

    def attempt(self, step: Step, run: Callable[[str | None], Work]) -> Work:
        """One attempt of a step's action or compensation, as a driver sees it: the transaction `run(fault)`
        bounded by the step's timeout (past it the transaction is cancelled, rolled back, and the outcome is
        `timeout`); a `timeout` fault lets the effect happen, then loses the answer."""
        fault = self.draw_fault()
        limit = self.policy.timeout_us(step)
        started = int(self.env.now)
        proc = self.spawn(run(fault))
        if proc is None:  # the process is down: this driver is being torn down too
            yield self.env.event()
        timer = self.env.timeout(limit)
        yield proc | timer
        if not proc.triggered:
            proc.interrupt("step timeout")
            return "timeout"
        if fault == "timeout":
            yield self.env.timeout(max(0, started + limit - int(self.env.now)))
            return "timeout"
        return proc.value

    def local_step(self, step: Step, saga: Saga, *, undo: bool, extra: int = 0,
                   then: Callable[[Outcome], None] | None = None) -> Work:
        """A saga design's step: the participant's own transaction for the action or compensation. `then(result)`
        runs inside the commit (choreography's inbox and outbox rows)."""
        order = saga.order
        operation = step.compensation if undo else step.action
        assert operation is not None

        def effect(made: Charge | None) -> Outcome:
            if undo:
                self.records.compensate(step.name, order)
                result: Outcome = "ok"
            else:
                result = self.records.act(step.name, order, made)  # type: ignore[assignment]
            if then is not None:
                then(result)
            return result

        provider = (order, step_key(order.id, step), saga.declined) if step.name == "charge" and not undo else None

        def run(fault: str | None) -> Work:
            result, _ = yield from self.transaction(step.participant, operation, skus=tuple(order.units()),
                                                    extra=extra, effect=effect, fault=fault, provider=provider)
            return result

        return (yield from self.attempt(step, run))

    # --- orders

    def accept(self, saga: Saga) -> None:
        """The POST's order is durable: the client gets its 202."""
        self.sagas[saga.order.id] = saga

    def finish(self, saga: Saga, state: SagaState | None, status: str | None = None) -> None:
        """The saga's terminal state is durable (the saga log, the order row)."""
        if saga.status in TERMINAL:
            return
        saga.status = status or (state.status if state is not None else "failed")
        saga.finished_us = int(self.env.now)
        self.stats.latency.record_us(saga.finished_us - saga.started_us)

    def _arrive(self, n: int, orders: Orders) -> Work:
        order, declined = orders.next(n)
        key = f"chk-{n:07d}"
        op = self.history.invoke("checkout", {"key": key, "tenant_id": TENANT}, time_us=self.now_us())
        saga = Saga(order, declined, key, int(self.env.now))
        proc = self.spawn(self.driver.start(saga))
        if proc is None:
            self.stats.rejected += 1
            self.history.complete(op, "fail", {"error": "connection refused"}, time_us=self.now_us())
            return
        yield proc
        if order.id in self.sagas:
            self.history.complete(op, "ok", {"order_id": order.id, "status": 202}, time_us=self.now_us())
        else:  # the process died before the order was recorded: the client never heard back
            self.history.complete(op, "info", {"error": "connection reset"}, time_us=self.now_us())

    def _drive_arrivals(self, schedule: list[tuple[int, str]]) -> Work:
        orders = Orders(self.seed, self.load_point, self.setup)
        for n, (t_us, _tenant) in enumerate(schedule):
            if t_us > self.env.now:
                yield self.env.timeout(t_us - self.env.now)
            self.env.process(self._arrive(n, orders))
        yield self.env.timeout(0)
        self._arrivals_done = True

    def _settled(self) -> bool:
        if not self._arrivals_done:
            return False
        if all(s.status in TERMINAL for s in self.sagas.values()):
            return True
        return not self.driver.recovers and not self._live

    def _settle(self, done: simpy.Event) -> Work:
        horizon = round((self.setup.duration_s + self.setup.drain_s) * US_PER_S)
        while not self._settled() and self.env.now < horizon:
            yield self.env.timeout(TICK_US)
        done.succeed()

    def run(self, schedule: list[tuple[int, str]] | None = None) -> RunResult:
        from scenarios.sagas.results import RunResult

        if schedule is None:
            schedule = arrivals(workload(self.load_point, self.setup), self.seed)
        self.env.process(self._drive_arrivals(schedule))
        self.env.process(self._crashes())
        for work in self.driver.background():
            self.spawn(work)
        done = self.env.event()
        self.env.process(self._settle(done))
        self.env.run(until=done)
        end_us = int(self.env.now)
        rows = [OrderRow(s.order.id, TENANT, s.status, s.order.amount, s.order.units(), EPOCH_US + s.started_us,
                         None if s.finished_us is None else EPOCH_US + s.finished_us, s.key)
                for s in self.sagas.values()]
        world = self.records.world(rows)
        return RunResult(self.design, self.load_point, self.seed, self.condition, world, self.history,
                         check(world, self.history.ops), self.stats, list(self.sagas.values()), end_us,
                         self.setup.duration_s)
