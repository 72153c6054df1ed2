"""The simulated lab: clients that retry, the provider, the ledger, and the run that ties them to the
workers (workers.py) and the design's simulated store (stores.py). The package docstring describes the model."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any

import simpy

from reference_impl.idempotency.core import (
    DEFAULT_RETENTION_US,
    Claim,
    Policy,
    Signal,
    fingerprint,
)
from reference_impl.idempotency.invariants import F_PAY, attempt_value, check, response_value
from reference_impl.idempotency.payments import (
    FAILED,
    PAYMENT_STATUS,
    SUCCEEDED,
    Charge,
    FaultMode,
    LedgerState,
    Payment,
    PaymentRequest,
)
from reference_impl.retries.core import (
    BudgetState,
    RetryBudget,
    honour_retry_after,
    make_policy,
    parse_retry_after,
)
from saaslab.history import History, Op
from scenarios.idempotency.messages import REFUSED, TIMEOUT, Answer, Attempt
from scenarios.idempotency.plan import DESIGNS, EPOCH_US, TARGET, TENANT, Setup, payment_body, workload
from scenarios.idempotency.results import RunResult, Stats
from scenarios.idempotency.stores import SimulatedStore
from scenarios.idempotency.workers import Worker
from scenarios.kernel import US_PER_MS, US_PER_S
from scenarios.kernel.workload import arrivals


class Lab:
    """One simulated run: clients, workers, a store per design, the provider and the ledger."""

    def __init__(self, design: str, setup: Setup, load_point: float, seed: int) -> None:
        if design not in DESIGNS:
            raise ValueError(f"unknown idempotency design {design!r}; choose one of {', '.join(DESIGNS)}")
        self.env = simpy.Environment()
        self.design = design
        self.setup = setup
        self.load_point = load_point
        self.seed = seed
        self.policy = Policy(DEFAULT_RETENTION_US, round(setup.lock_timeout_s * US_PER_S))
        self.backoff = make_policy(setup.retry_policy, base_us=round(setup.retry_base_ms * US_PER_MS),
                                   cap_us=round(setup.retry_cap_ms * US_PER_MS), max_attempts=setup.max_attempts)
        self.budget = RetryBudget(*setup.retry_budget) if setup.retry_budget else None
        self.budget_state: BudgetState | None = None
        # Separate streams, so that a design drawing more of one kind does not shift the others.
        self.client_rng = random.Random(f"idempotency:client:{seed}:{load_point}")
        self.fault_rng = random.Random(f"idempotency:faults:{seed}:{load_point}")
        self.service_rng = random.Random(f"idempotency:service:{seed}:{load_point}")
        self.history = History(process="sim")
        self.stats = Stats()
        self.charges: dict[tuple[str, str], Charge] = {}
        self.payments: dict[str, Payment] = {}
        """The ledger: payment rows by charge id (the table's unique key)."""
        self._ids = 0
        self._tokens = 0
        self.workers = [Worker(self, i) for i in range(setup.workers)]
        self.store = SimulatedStore(self)
        self._open_chains = 0
        self._provider_calls = 0
        self._arrivals_done = False
        self._answered: set[str] = set()
        self._chains_left: Counter[str] = Counter()
        self._first_send: dict[str, int] = {}
        self._gave_up: list[Attempt] = []
        self._client_timeout_us = round(setup.client_timeout_ms * US_PER_MS)
        self._slow_phase_us = (None if setup.slow_phase is None else
                               tuple(round(f * setup.duration_s * US_PER_S) for f in setup.slow_phase))

    # --- clocks and ids

    def now_us(self) -> int:
        return EPOCH_US + int(self.env.now)

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def new_token(self) -> str:
        self._tokens += 1
        return f"idk_{self._tokens:032x}"

    def hop(self, ms: float) -> simpy.Timeout:
        return self.env.timeout(round(ms * US_PER_MS))

    # --- the provider (a mirror of provider.charge) and the ledger (ledger.record_payment)

    def draw_fault(self) -> FaultMode | None:
        s, u = self.setup, self.fault_rng.random()
        p_slow, p_timeout = s.p_slow, s.p_timeout_after_effect
        if self._slow_phase_us is not None:
            # The live run's phases: one standing fault at the provider at a time.
            lo, hi = self._slow_phase_us
            p_slow, p_timeout = (p_slow, 0.0) if lo <= self.env.now < hi else (0.0, p_timeout)
        if u < p_slow:
            return "slow"
        if u < p_slow + s.p_fail:
            return "fail"
        if u < p_slow + s.p_fail + p_timeout:
            return "timeout_after_effect"
        return None

    def charge(self, claim: Claim, request: PaymentRequest, fault: FaultMode | None
               ) -> Generator[simpy.Event, Any, Charge | Signal]:
        """A provider call. The charge happens halfway, in a callback of the provider's own, so it
        stands whatever becomes of the caller: a worker that dies while waiting leaves it made."""
        s = self.setup
        latency = round((s.provider_ms + self.service_rng.expovariate(1.0 / s.provider_jitter_ms)) * US_PER_MS)
        outcome: list[Charge | Signal] = []
        halfway = self.env.timeout((round(s.slow_ms * US_PER_MS) if fault == "slow" else 0) + latency // 2)
        halfway.callbacks.append(lambda _e: outcome.append(self._provider_charge(claim, request, fault)))
        self._provider_calls += 1
        yield halfway
        yield self.env.timeout(latency - latency // 2)
        return outcome[0]

    def _provider_charge(self, claim: Claim, request: PaymentRequest, fault: FaultMode | None
                         ) -> Charge | Signal:
        """provider.charge at the provider: one charge per (tenant, token); a seen token gets the first outcome."""
        self._provider_calls -= 1
        status = FAILED if fault == "fail" else SUCCEEDED
        made = self.charges.get((claim.tenant_id, claim.token))
        if made is None:
            made = self.charges[(claim.tenant_id, claim.token)] = Charge(
                f"ch_{self._next_id():024x}", claim.tenant_id, claim.token, claim.key or None, request.amount,
                request.currency, status)
        if (made.amount, made.currency) != (request.amount, request.currency) or made.status == FAILED:
            return Signal.DECLINED
        if fault == "timeout_after_effect":
            return Signal.TIMED_OUT
        return made

    def payment_row(self, key: str, charge: Charge) -> Payment:
        """INSERT ... ON CONFLICT (charge_id): a retried write finds the first row."""
        paid = self.payments.get(charge.id)
        if paid is None:
            created = datetime.fromtimestamp(self.now_us() / US_PER_S, UTC)
            paid = self.payments[charge.id] = Payment(uuid.UUID(int=self._next_id()), charge.tenant_id, key or None,
                                                      charge.id, charge.amount, charge.currency, PAYMENT_STATUS,
                                                      created)
        return paid

    def ledger(self) -> LedgerState:
        return LedgerState(tuple(self.charges.values()), tuple(self.payments.values()))

    # --- clients

    def route(self) -> Worker | None:
        alive = [w for w in self.workers if w.up]
        return self.service_rng.choice(alive) if alive else None

    def drive(self, schedule: list[tuple[int, str]]) -> Generator[simpy.Event, Any, None]:
        for n, (t_us, _tenant) in enumerate(schedule):
            if t_us > self.env.now:
                yield self.env.timeout(t_us - self.env.now)
            self.pay(n)
        self._arrivals_done = True

    def pay(self, n: int) -> None:
        """One logical payment: a client, and sometimes a double click's second client."""
        key = f"pay-{n:07d}"
        request, body = payment_body(n)
        attempt = Attempt(key, fingerprint("POST", TARGET, body), request)
        self.stats.payments += 1
        self._first_send[key] = int(self.env.now)
        clicks = [0]
        s = self.setup
        if self.client_rng.random() < s.p_double_click:
            n = s.clicks[0] if len(s.clicks) == 1 else self.client_rng.choice(s.clicks)
            clicks += [round(self.client_rng.uniform(0, s.double_click_ms) * US_PER_MS) for _ in range(n - 1)]
        for delay in clicks:
            self.start_client(attempt, delay)

    def start_client(self, attempt: Attempt, delay_us: int, *, reconciling: bool = False) -> None:
        self._chains_left[attempt.key] += 1
        self._open_chains += 1
        self.env.process(self.client(attempt, delay_us, reconciling=reconciling))

    def client(self, attempt: Attempt, delay_us: int, *, reconciling: bool = False
               ) -> Generator[simpy.Event, Any, None]:
        """One client of a payment. Reconciling (after the run) it spends no retry budget, as the live pass."""
        env, stats, key = self.env, self.stats, attempt.key
        if delay_us:
            yield env.timeout(delay_us)
        stats.chains += 1
        tries = previous = 0
        try:
            while True:
                tries += 1
                stats.attempts += 1
                sent = int(env.now)
                op = self.history.invoke(F_PAY, attempt_value(TENANT, key), time_us=self.now_us())
                answered = env.event()
                worker = self.route()
                if worker is None:
                    answered.succeed(REFUSED)
                else:
                    worker.submit(attempt, answered)
                    # The client's timeout answers first if the worker has not (cheaper than `answered | timeout`).
                    env.timeout(self._client_timeout_us).callbacks.append(
                        lambda _t, answered=answered: None if answered.triggered else answered.succeed(TIMEOUT))
                got = yield answered
                retry_after_us = self._record(op, got, sent)
                if isinstance(got, Answer) and got.decisive:
                    if self.budget is not None:
                        self.budget_state = self.budget.on_success(self.budget_state, self.now_us())
                    if key not in self._answered:
                        self._answered.add(key)
                        if reconciling:
                            stats.reconciled += 1
                        else:  # the live driver times a payment's first pass only
                            stats.payment_latency.record_us(int(env.now) - self._first_send[key])
                    return
                wait = honour_retry_after(self.backoff.next_delay_us(tries, previous, self.client_rng), retry_after_us)
                if wait is None:
                    return
                asked_back = isinstance(got, Answer) and got.status in (409, 429)
                if self.budget is not None and not asked_back and not reconciling:
                    # A retry after an unknown outcome spends budget, as the live clients' do.
                    allowed, self.budget_state = self.budget.try_retry(self.budget_state, self.now_us())
                    if not allowed:
                        return
                previous = wait
                if wait:
                    yield env.timeout(wait)
        finally:
            self._open_chains -= 1
            self._chains_left[key] -= 1
            if self._chains_left[key] == 0 and key not in self._answered and not reconciling:
                stats.gave_up += 1
                self._gave_up.append(attempt)

    def _record(self, op: Op, got: Answer | str, sent_us: int) -> int | None:
        """Complete the attempt's history operation; returns the Retry-After to honour (µs) if any."""
        now = self.now_us()
        if not isinstance(got, Answer):
            self.stats.timeouts += got == TIMEOUT
            self.history.complete(op, "fail" if got == REFUSED else "info", {"error": got}, time_us=now)
            return None
        self.stats.latency.record_us(int(self.env.now) - sent_us)
        if got.decisive:
            self.stats.replays += got.replayed
            self.history.complete(op, "ok", response_value(got.status, got.body, got.replayed), time_us=now)
        else:
            self.stats.conflicts += got.status == 409
            self.history.complete(op, "fail" if got.status < 500 else "info", {"status": got.status}, time_us=now)
        if got.retry_after_s is None:
            return None
        return parse_retry_after(str(got.retry_after_s), now)

    @property
    def quiet(self) -> bool:
        return (self._arrivals_done and self._open_chains == 0 and self._provider_calls == 0
                and not any(w.busy for w in self.workers))

    # --- the run

    def run(self, schedule: list[tuple[int, str]] | None = None) -> RunResult:
        """Run to the end; `schedule` ((µs, tenant) arrivals) replaces the Poisson workload."""
        if schedule is None:
            schedule = arrivals(workload(self.load_point, self.setup), self.seed)
        self.env.process(self.drive(schedule))
        done = self.env.event()
        self.env.process(self._settle(done))
        for at, point in self.setup.crash_at:
            self.env.process(self._arm_crash(at, point))
        self.store.start()
        self.env.run(until=done)
        ledger = self.ledger()
        return RunResult(self.design, self.load_point, self.seed, self.history, ledger,
                         check(self.history.ops, ledger), self.stats, int(self.env.now))

    def _arm_crash(self, at: float, point: str) -> Generator[simpy.Event, Any, None]:
        """A one-shot crash, armed on one live worker as the live harness arms it (on whichever accepts)."""
        yield self.env.timeout(round(at * self.setup.duration_s * US_PER_S))
        alive = [w for w in self.workers if w.up]
        if alive:
            self.fault_rng.choice(alive).armed.add(point)

    def _settle(self, done: simpy.Event) -> Generator[simpy.Event, Any, None]:
        """Wait for the last client and the last abandoned attempt (then, with a reconcile pass, for its
        clients too), then for the store to settle."""
        tick = round(100 * US_PER_MS)
        while not self.quiet:
            yield self.env.timeout(tick)
        if self.setup.reconcile_after_s is not None and self._gave_up:
            yield self.hop(self.setup.reconcile_after_s * 1000)
            for attempt in self._gave_up:
                self.start_client(attempt, 0, reconciling=True)
            while not self.quiet:
                yield self.env.timeout(tick)
        yield from self.store.settle()
        done.succeed()
