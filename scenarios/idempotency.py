"""Idempotency scenario: how often does each design charge a payment twice, or charge it without
recording it, when clients time out and retry, the provider misbehaves and workers crash between
recovery points, across load levels?

Designs (`DESIGNS`, as in `reference_impl.idempotency.designs`): `none` (every attempt executes
with a fresh provider token: the deliberately unsafe baseline), `redis` (an atomic claim plus the
stored response; the payment is `ledger.charge_then_record`) and `postgres` (brandur's atomic
phases `started -> charge_created -> finished` plus a completer).

The model, one run per (design, load point, seed); every parameter is a field of `Setup`:

* Clients. Logical payments arrive as a Poisson process at `load_point` x `capacity_rps(setup)`
  for `duration_s`; each has its own `Idempotency-Key` and body (its amount), so its own
  `core.fingerprint`. A share `p_double_click` is clicked twice: a second client sends the same
  key U(0, `double_click_ms`) later. Each client waits `client_timeout_ms` per attempt and retries
  timeouts, dropped connections, 409 and 5xx with `reference_impl.retries.core` (the policy
  `retry_policy`, `max_attempts` attempts at most, `Retry-After` honoured through
  `parse_retry_after` and `honour_retry_after`): the same code the load harness retries with.
  201 and 402, fresh or replayed, end a client; one that runs out of attempts gives up.
* App servers: `workers` worker processes behind one port, each with `slots` request slots
  admitted by the service's FIFO scheduler (`reference_impl.tenancy.core.make_scheduler`). A
  request holds a slot for a handler time (`handler_ms` + exponential `handler_overhead_ms`),
  its store round trips (`redis_rtt_ms`, `pg_rtt_ms`; a statement takes effect when sent) and its
  provider call. A worker keeps running an attempt whose client has gone (wasted work). Each
  attempt goes to a random live worker; with none alive the connection is refused.
* The provider (a mirror of `provider.charge`): one charge per (tenant, token); asking again with
  a token it has seen returns the first outcome. Every call from the service draws one fault:
  `slow` (p_slow: `slow_ms` more), `fail` (p_fail: declined, a failed charge kept) or
  `timeout_after_effect` (p_timeout_after_effect: it charges, then the service gets
  ProviderTimeout, releases the claim and answers 504 with `Retry-After: 1`). A call takes
  `provider_ms` + exponential `provider_jitter_ms`; the charge happens halfway, so a worker that
  dies while waiting leaves the charge made.
* Crashes: at each of the payment's checkpoints (`ledger.CHARGED`, `ledger.RECORDED`) the worker
  process dies with probability `p_crash`: every attempt on it is dropped (its client sees a reset)
  and the worker restarts after `restart_ms`. The charge and anything written stay.
* Claims are decided by `core.decide` on the simulated Redis hash or PostgreSQL row (the twin
  rule); finish, release and the `started -> charge_created` compare-and-set are guarded by the
  claim's token as in `finish.lua`, `release.lua` and postgres.py. The lock is `lock_timeout_s`
  (shorter than the service's 90 s default, so that recoveries happen within a run); records
  outlive the run, so no reaper runs. `postgres` runs the completer (`completer.run_once`'s logic)
  every `completer_interval_s`: it takes over abandoned claims (RECOVER) and resumes them from
  their recovery point, as its own process, where no fault or crash is injected.

A run ends when the last client is done, every worker is idle and (postgres) the completer has
finished every claim (the pass after the last lock ran out). Then the run's history (one `pay` operation per attempt: `ok` for 201, 402 and replays, `fail`
for 409, 422 and refused connections, `info` for timeouts, resets and 504) and the ledger (the
provider's charges, the payment rows) go through `reference_impl.idempotency.invariants.check`.
Metrics per (design, load point, seed), tenant "*":

- `payments`: logical payments (requests); `attempts`: HTTP attempts sent (requests)
- `duplicates_per_10k`: extra effects per 10,000 logical payments: per key, the larger of
  (succeeded charges - 1) and (payment rows - 1), when positive (per_10k)
- `effect_violations_per_10k`: keys `exactly_one_effect` flags, per 10,000 logical payments (per_10k)
- `orphans_per_10k`: `no_orphan_charges` violations (succeeded charges without their one payment
  row, after the completer) per 10,000 logical payments (per_10k)
- `replay_mismatch`: replays whose bytes differ from the key's first answer (`replays_match_first`
  violations; requests)
- `conflicts_pct`, `replays_pct`, `timeouts_pct`: attempts answered 409, answered with a replay,
  or not answered within the client timeout, over attempts (percent)
- `retries_per_request`: attempts beyond each client's first, per logical payment (ratio)
- `gave_up_pct`: logical payments whose clients all gave up without a 201 or 402 (percent)
- `latency_p50`, `latency_p99`: per attempt that got an HTTP answer, from send to answer (ms;
  through the HDR histogram, as the load harness measures)
- `payment_latency_p99`: from a payment's first send to its first 201 or 402 (ms)
- `crashes`: worker crashes (count); `completed_by_completer_per_10k`: claims the completer
  finished, per 10,000 logical payments (per_10k)
- `exactly_one_effect`, `replays_match_first`, `no_orphan_charges`: 1 if the check held (bool);
  `checks_valid`: 1 if all three held (bool)

The live plan, replayed (`aslive_*`). `LIVE_PLAN` holds the live load test's workload, clients,
faults and service (loadtests/idempotency.py and saaslab/live/idempotency.py take theirs from it);
`as_live` turns it into a `Setup` and `simulate_as_live` runs it, so the report can set simulated
beside measured like for like. It is the model above with: `workers` x `slots` of the live service
(2 x 8) and its lock timeout (2 s) and completer interval; arrivals at the load point x the
capacity with nothing armed (`measured_capacity_rps`, as the harness measures it) for the live
run's duration; every payment double-clicked by 2 or 3 clients within 50 ms; clients with the live
timeout, backoff and `max_attempts` (8) and the shared `RetryBudget` (`retry_budget`: a retry after
an unknown outcome spends it, one after a 409 does not; a client it refuses gives up); the
provider's phases (`slow_phase`: slow only from 40% to 60% of the run, 25% of calls, 1500 ms;
before and after, and through the reconcile pass, 10% of calls time out after the charge; none
declines); no random crash but the live run's two one-shot crashes (`crash_at`: at 15% of the
run a random live worker is armed to die at its next `charged`, at 50% at its next
`charge_created`; a crash or restart disarms it); and the reconcile pass (`reconcile_after_s`:
once every client is done, past a lock and a completer pass, one client per payment whose clients
all gave up retries it, without the budget, until a final answer or `max_attempts`). `run` replays
it at the live run's load points and duration (`--quick`: `LIVE_PLAN.quick_load_points` for
`LIVE_PLAN.quick_duration_s`, as `saaslab load --quick`), for the first `AS_LIVE_SEEDS` seeds (all
with `--quick`). What the model still leaves out: the live service's CPU (the model's service is
faster than a small machine's, so at the same load point its rate, and the work a fixed-length slow
phase backs up, are higher) and a crashed worker's real restart time (here `restart_ms`). Rows,
same units as above:

- `aslive_payments`, `aslive_duplicates_per_10k`, `aslive_orphans_per_10k`, `aslive_latency_p99`,
  `aslive_gave_up_pct` (before the reconcile pass, as the live counter), `aslive_retries_per_request`,
  `aslive_crashes`: those metrics of the replay; `aslive_unresolved`: payments still without a
  final answer after the reconcile pass (requests; the live row `unresolved`).

What the designs do under this model, from reading the code it mirrors (the sweep measures how often):

* `none` duplicates whenever an attempt that charged goes unanswered and the client retries (a
  client timeout, a 504 after `timeout_after_effect`, a crash after the charge) and on every
  double click; each 504 or crash after the charge also leaves an orphan charge.
* `redis` never duplicates: a retry either meets the claim (409 while locked, then the stored
  response) or recovers it after the lock runs out and asks the provider again with the same
  token, which returns the first charge; the payment row is unique per charge. But nothing
  durable marks "charged": when the worker crashed after charging, or the provider timed out after
  charging, and the client stops retrying before it recovers the claim, the charge never gets its
  payment row (an orphan; the design has no completer). A Redis failover losing a claim is not
  modelled.
* `postgres` never duplicates and, after the completer, leaves no orphan: the claim stores the
  request's parameters, so the completer resumes an abandoned claim whether or not its client
  comes back, with the same token. It may charge a payment whose client gave up before the charge
  was made (the request was accepted, and the completer carries it through).

`run` sweeps DESIGNS x LOAD_POINTS x seeds (`DURATION_S`: 6 s of arrivals per run, 1.5 s with
`--quick`), and the live plan as above; 95% confidence intervals come from the seeds.
`payment_body` is the bytes both faces send.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import simpy

from reference_impl.idempotency.core import (
    DEFAULT_RETENTION_US,
    RUNS,
    Claim,
    Outcome,
    Policy,
    Record,
    State,
    StoredResponse,
    advance,
    decide,
    fingerprint,
)
from reference_impl.idempotency.core import finish as finish_record
from reference_impl.idempotency.core import release as release_record
from reference_impl.idempotency.invariants import F_PAY, attempt_value, check, response_value
from reference_impl.idempotency.ledger import (
    CHARGED,
    CHECKPOINTS,
    PAYMENT_STATUS,
    RECORDED,
    LedgerState,
    Payment,
    PaymentRequest,
    declined_response,
    payment_response,
)
from reference_impl.idempotency.provider import FAILED, SUCCEEDED, Charge, FaultMode
from reference_impl.retries.core import (
    BudgetState,
    RetryBudget,
    honour_retry_after,
    make_policy,
    parse_retry_after,
)
from reference_impl.tenancy.core import Job, make_scheduler
from saaslab.history import CheckResult, History, Op
from saaslab.results import ALL_TENANTS, LatencyHistogram, Row, new_run_id, write_run
from scenarios.kernel import US_PER_MS, US_PER_S
from scenarios.kernel.metrics import RunKey
from scenarios.kernel.sweep import sweep
from scenarios.kernel.workload import TenantSpec, Workload, arrivals

PATTERN = "idempotency"
DESIGNS = ("none", "redis", "postgres")
LOAD_POINTS = (0.3, 0.6, 0.9, 1.2)
"""Offered logical payments per second as a fraction of `capacity_rps(setup)`; 1.2 overloads it."""
DURATION_S = {"full": 6.0, "quick": 1.5}
TENANT = "acme"
CURRENCY = "EUR"
TARGET = "/v1/payments"
EPOCH_US = 1_700_000_000_000_000
"""Simulated time 0 on the app's clock: a real wall-clock instant."""
COMPLETER_BATCH = 100
PER_10K = 10_000


@dataclass(frozen=True)
class Setup:
    """Every knob of one run besides design, load point and seed (the module docstring says what each does)."""

    duration_s: float = DURATION_S["full"]
    workers: int = 4
    slots: int = 4
    handler_ms: float = 2.0
    handler_overhead_ms: float = 1.0
    provider_ms: float = 20.0
    provider_jitter_ms: float = 10.0
    redis_rtt_ms: float = 0.3
    pg_rtt_ms: float = 1.0
    p_slow: float = 0.005
    slow_ms: float = 1200.0
    p_fail: float = 0.01
    p_timeout_after_effect: float = 0.01
    slow_phase: tuple[float, float] | None = None
    """(start, end) as fractions of `duration_s`: the provider is slow only inside, and times out after the
    charge only outside (and after the run); None: both all along."""
    p_crash: float = 0.0005
    crash_points: tuple[str, ...] = CHECKPOINTS
    crash_at: tuple[tuple[float, str], ...] = ()
    """One-shot crashes: (fraction of `duration_s`, checkpoint): then one live worker, drawn at random, dies
    the next time it passes that checkpoint (a crash or restart disarms it)."""
    restart_ms: float = 500.0
    p_double_click: float = 0.02
    clicks: tuple[int, ...] = (2,)
    """How many clients a double-clicked payment has (drawn uniformly)."""
    double_click_ms: float = 300.0
    client_timeout_ms: float = 1000.0
    retry_policy: str = "full_jitter"
    retry_base_ms: float = 100.0
    retry_cap_ms: float = 2000.0
    max_attempts: int = 6
    retry_budget: tuple[int, int, int] | None = None
    """(ratio_pct, min_per_s, burst) of a `RetryBudget` all clients share; None: no budget."""
    reconcile_after_s: float | None = None
    """Once every client is done, this long later one client retries each payment whose clients all gave up
    (without the budget); None: no such pass."""
    lock_timeout_s: float = 5.0
    completer_interval_s: float = 1.0

    def parameters(self) -> dict[str, Any]:
        return {**asdict(self), "capacity_rps": capacity_rps(self)}


SETUP = Setup()


@dataclass(frozen=True)
class LivePlan:
    """The live load test's workload, clients and faults, and the service the harness runs it against.

    One source for both faces: loadtests/idempotency.py's `Plan` takes its defaults from `LIVE_PLAN`
    (its `SAASLAB_LOAD_WORKLOAD` overrides still apply), saaslab/live/idempotency.py its service, load
    points and durations, and `as_live` replays it in the model (the `aslive_*` metrics)."""

    load_points: tuple[float, ...] = LOAD_POINTS
    duration_s: float = DURATION_S["full"]
    quick_load_points: tuple[float, ...] = (0.3,)
    quick_duration_s: float = 3.0
    p_double_click: float = 1.0
    clicks: tuple[int, ...] = (2, 3)
    """How many clients send a double-clicked payment (drawn uniformly)."""
    double_click_ms: float = 50.0
    client_timeout_ms: float = SETUP.client_timeout_ms
    retry_policy: str = SETUP.retry_policy
    retry_base_ms: float = SETUP.retry_base_ms
    retry_cap_ms: float = SETUP.retry_cap_ms
    max_attempts: int = 8
    retry_budget: tuple[int, int, int] = (20, 5, 50)
    """The clients' shared retry budget: retries after an unknown outcome may be `ratio_pct`% of
    successes plus `min_per_s` per second, banking up to `burst`."""
    p_timeout_after_effect: float = 0.1
    """Outside the slow phase (`steady` before it, `storm` after it and on through the reconcile pass)."""
    p_slow: float = 0.25
    slow_ms: int = 1500
    slow_phase: tuple[float, float] = (0.4, 0.6)
    """The slow provider's phase, as fractions of the run."""
    crashes: tuple[tuple[float, str], ...] = ((0.15, CHARGED), (0.5, RECORDED))
    """One-shot worker crashes: (fraction of the run, checkpoint; the fault point is `idempotency.<checkpoint>`)."""
    reconcile: bool = True
    """After the run, retry each payment whose clients all gave up until it gets a final answer."""
    workers: int = 2
    slots: int = 8
    """Per worker: the service's default `scheduler_slots`."""
    lock_timeout_s: float = 2.0
    completer_interval_s: float = 1.0

    @property
    def reconcile_after_s(self) -> float:
        """When clients that gave up come back: past a lock and a completer pass, so that `postgres`'s
        completer gets to finish what they abandoned first."""
        return self.lock_timeout_s + self.completer_interval_s + 0.5


LIVE_PLAN = LivePlan()
AS_LIVE = "aslive_"
AS_LIVE_METRICS = ("payments", "duplicates_per_10k", "orphans_per_10k", "latency_p99", "gave_up_pct",
                   "retries_per_request", "crashes")
"""Metrics the simulation also writes for the live plan, as `aslive_<metric>` (plus `aslive_unresolved`)."""
AS_LIVE_SEEDS = 3
"""Seeds of the live plan's replay in a full sweep (all of them with `--quick`): 6 s of retry storms at each
load point are the sweep's costliest runs, and three keep the whole sweep within a minute on 2 cores."""


def as_live(setup: Setup = SETUP, plan: LivePlan | None = None, *, quick: bool = False) -> Setup:
    """`setup`'s service model running the live plan (default `LIVE_PLAN`): its workers and slots, lock and
    completer, clients, phases of provider faults, one-shot crashes and reconcile pass, for the live run's
    duration. Nothing declines (the plan arms no `fail`) and nothing crashes at random."""
    plan = plan if plan is not None else LIVE_PLAN
    return replace(setup, duration_s=plan.quick_duration_s if quick else plan.duration_s, workers=plan.workers,
                   slots=plan.slots, p_fail=0.0, p_timeout_after_effect=plan.p_timeout_after_effect,
                   p_slow=plan.p_slow, slow_ms=float(plan.slow_ms), slow_phase=plan.slow_phase, p_crash=0.0,
                   crash_at=plan.crashes, p_double_click=plan.p_double_click, clicks=plan.clicks,
                   double_click_ms=plan.double_click_ms, client_timeout_ms=plan.client_timeout_ms,
                   retry_policy=plan.retry_policy, retry_base_ms=plan.retry_base_ms, retry_cap_ms=plan.retry_cap_ms,
                   max_attempts=plan.max_attempts, retry_budget=plan.retry_budget,
                   reconcile_after_s=plan.reconcile_after_s if plan.reconcile else None,
                   lock_timeout_s=plan.lock_timeout_s, completer_interval_s=plan.completer_interval_s)


def capacity_rps(setup: Setup = SETUP) -> float:
    """Payments per second the app servers can execute: slots over a payment's mean slot time
    (handler, provider with its slow calls, the postgres design's three statements)."""
    slow_share = 1.0 if setup.slow_phase is None else setup.slow_phase[1] - setup.slow_phase[0]
    mean_ms = (setup.handler_ms + setup.handler_overhead_ms + setup.provider_ms + setup.provider_jitter_ms
               + setup.p_slow * slow_share * setup.slow_ms + 3 * setup.pg_rtt_ms)
    return setup.workers * setup.slots * 1000.0 / mean_ms


def measured_capacity_rps(setup: Setup = SETUP) -> float:
    """The capacity as the live harness measures it: with nothing armed (no slow provider calls)."""
    return capacity_rps(replace(setup, p_slow=0.0))


def workload(load_point: float, setup: Setup = SETUP, *,
             capacity: Callable[[Setup], float] = capacity_rps) -> Workload:
    """The logical payments: Poisson at `load_point` x `capacity(setup)` (shared with the load test)."""
    return Workload(tenants=(TenantSpec(TENANT, rate=load_point * capacity(setup)),), process="poisson",
                    duration_s=setup.duration_s, params={"load_point": load_point})


def payment_body(n: int) -> tuple[PaymentRequest, bytes]:
    """The n-th payment's request and the exact bytes a client sends (and resends) for it."""
    request = PaymentRequest(amount=100 + n % 9_900, currency=CURRENCY)
    return request, b'{"amount":%d,"currency":"%s"}' % (request.amount, request.currency.encode())


# ---------------------------------------------------------------------------------------------
# What travels between clients, workers, stores and the provider


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer as the client sees it."""

    status: int
    body: bytes = b""
    replayed: bool = False
    retry_after_s: int | None = None

    @property
    def decisive(self) -> bool:
        """201 or 402, fresh or replayed: the payment's outcome is known."""
        return self.status in (201, 402)


RESET = "reset"
"""The worker died with the attempt on it: the connection dropped (unknown outcome)."""
REFUSED = "refused"
"""No worker was alive to accept the connection (certainly no effect)."""
TIMEOUT = "timeout"
GATEWAY_TIMEOUT = Answer(504, retry_after_s=1)
CONFLICT_BODY = b'{"type":"idempotency-conflict"}'


def _answer(response: StoredResponse, replayed: bool = False) -> Answer:
    return Answer(response.status, response.body, replayed)


@dataclass(frozen=True, slots=True)
class Attempt:
    key: str
    fingerprint: str
    request: PaymentRequest


class ProviderTimeoutResult:
    """The provider's answer was lost (what `provider.ProviderTimeout` signals)."""


class ProviderDeclined:
    """The provider refused the charge (what `provider.ProviderError` signals)."""


TIMED_OUT = ProviderTimeoutResult()
DECLINED = ProviderDeclined()


class Crashed(Exception):
    """The worker process died at a checkpoint."""


# ---------------------------------------------------------------------------------------------
# The lab: provider, ledger, workers


@dataclass
class Stats:
    payments: int = 0
    chains: int = 0
    attempts: int = 0
    conflicts: int = 0
    replays: int = 0
    timeouts: int = 0
    gave_up: int = 0
    reconciled: int = 0
    """Payments the reconcile pass brought to a final answer."""
    crashes: int = 0
    completed_by_completer: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    payment_latency: LatencyHistogram = field(default_factory=LatencyHistogram)


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
        self.workers = [Worker(self, i) for i in range(setup.workers)]
        self.store: Store = {"none": NoStore, "redis": RedisStore, "postgres": PostgresStore}[design](self)
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
        return f"idk_{self._next_id():032x}"

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
               ) -> Generator[simpy.Event, Any, Charge | ProviderDeclined | ProviderTimeoutResult]:
        """A provider call. The charge happens halfway, in a callback of the provider's own, so it
        stands whatever becomes of the caller: a worker that dies while waiting leaves it made."""
        s = self.setup
        latency = round((s.provider_ms + self.service_rng.expovariate(1.0 / s.provider_jitter_ms)) * US_PER_MS)
        outcome: list[Charge | ProviderDeclined | ProviderTimeoutResult] = []
        halfway = self.env.timeout((round(s.slow_ms * US_PER_MS) if fault == "slow" else 0) + latency // 2)
        halfway.callbacks.append(lambda _e: outcome.append(self._provider_charge(claim, request, fault)))
        self._provider_calls += 1
        yield halfway
        yield self.env.timeout(latency - latency // 2)
        return outcome[0]

    def _provider_charge(self, claim: Claim, request: PaymentRequest, fault: FaultMode | None
                         ) -> Charge | ProviderDeclined | ProviderTimeoutResult:
        """provider.charge at the provider: one charge per (tenant, token); a seen token gets the first outcome."""
        self._provider_calls -= 1
        status = FAILED if fault == "fail" else SUCCEEDED
        made = self.charges.get((claim.tenant_id, claim.token))
        if made is None:
            made = self.charges[(claim.tenant_id, claim.token)] = Charge(
                f"ch_{self._next_id():024x}", claim.tenant_id, claim.token, claim.key or None, request.amount,
                request.currency, status)
        if (made.amount, made.currency) != (request.amount, request.currency) or made.status == FAILED:
            return DECLINED
        if fault == "timeout_after_effect":
            return TIMED_OUT
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
        """A named point of the payment's flow (ledger.CHECKPOINTS): the worker may die here."""
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


class _NoCrash:
    """The completer's checkpoints: it runs as its own process, where no crash is injected."""

    def checkpoint(self, point: str) -> None:
        """Nothing happens."""


NO_CRASH = _NoCrash()


# ---------------------------------------------------------------------------------------------
# The designs, as the service runs them (designs.py), on simulated state


class Store:
    """What every design does with an attempt; subclasses keep their own state."""

    rtt_ms = 0.0

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def start(self) -> None:
        """Start background processes (the completer)."""

    def settle(self) -> Generator[simpy.Event, Any, None]:
        """After the last client: what the design still does before the state is read."""
        yield from ()

    def op(self) -> simpy.Timeout:
        return self.lab.hop(self.rtt_ms)

    def serve(self, worker: Worker, attempt: Attempt, now_us: int) -> Generator[simpy.Event, Any, Answer]:
        """Claim, then carry a running claim through the payment (designs.py's per-request steps)."""
        claim = yield from self.claim(attempt, now_us)
        if claim.outcome == Outcome.REPLAY:
            assert claim.response is not None
            return _answer(claim.response, replayed=True)
        if claim.outcome == Outcome.CONFLICT:
            return Answer(409, CONFLICT_BODY, retry_after_s=claim.retry_after_s)
        if claim.outcome == Outcome.MISMATCH:
            return Answer(422)
        return (yield from self.pay(worker, claim, attempt.request, now_us, self.lab.draw_fault()))

    def claim(self, attempt: Attempt, now_us: int) -> Generator[simpy.Event, Any, Claim]:
        raise NotImplementedError

    def pay(self, worker: Worker | _NoCrash, claim: Claim, request: PaymentRequest, now_us: int,
            fault: FaultMode | None) -> Generator[simpy.Event, Any, Answer]:
        return (yield from self.charge_then_record(worker, claim, request, now_us, fault))

    def finish(self, claim: Claim, response: StoredResponse) -> Generator[simpy.Event, Any, StoredResponse]:
        raise NotImplementedError

    def release(self, claim: Claim, now_us: int) -> Generator[simpy.Event, Any, None]:
        raise NotImplementedError

    def charge_then_record(self, worker: Worker | _NoCrash, claim: Claim, request: PaymentRequest, now_us: int,
                           fault: FaultMode | None) -> Generator[simpy.Event, Any, Answer]:
        """ledger.charge_then_record: charge with the claim's token, write the payment, finish."""
        lab = self.lab
        charged = yield from lab.charge(claim, request, fault)
        if charged is TIMED_OUT:
            yield from self.release(claim, now_us)
            return GATEWAY_TIMEOUT
        if charged is DECLINED:
            return _answer((yield from self.finish(claim, declined_response())))
        worker.checkpoint(CHARGED)
        paid = lab.payment_row(claim.key, charged)
        yield lab.hop(lab.setup.pg_rtt_ms)
        worker.checkpoint(RECORDED)
        return _answer((yield from self.finish(claim, payment_response(paid))))


class NoStore(Store):
    """`none` (designs.NoIdempotency): every attempt executes with a fresh token. UNSAFE ON PURPOSE."""

    def claim(self, attempt: Attempt, now_us: int) -> Generator[simpy.Event, Any, Claim]:
        yield from ()
        return Claim(Outcome.EXECUTE, TENANT, attempt.key, self.lab.new_token())

    def finish(self, claim: Claim, response: StoredResponse) -> Generator[simpy.Event, Any, StoredResponse]:
        yield from ()
        return response

    def release(self, claim: Claim, now_us: int) -> Generator[simpy.Event, Any, None]:
        yield from ()


@dataclass
class _Hash:
    """A key's Redis HASH: the core's record plus the claim's token (field `t`)."""

    record: Record
    token: str


class RedisStore(Store):
    """`redis` (redis_store.RedisIdempotency): claim.lua, finish.lua and release.lua on a dict."""

    def __init__(self, lab: Lab) -> None:
        super().__init__(lab)
        self.rtt_ms = lab.setup.redis_rtt_ms
        self.hashes: dict[str, _Hash] = {}

    def claim(self, attempt: Attempt, now_us: int) -> Generator[simpy.Event, Any, Claim]:
        stored = self.hashes.get(attempt.key)
        d = decide(stored.record if stored else None, attempt.fingerprint, now_us, self.lab.policy)
        key = attempt.key
        if d.outcome == Outcome.EXECUTE:
            token = self.lab.new_token()
            self.hashes[key] = _Hash(d.record, token)
            claim = Claim(Outcome.EXECUTE, TENANT, key, token, State.STARTED)
        elif d.outcome == Outcome.RECOVER:
            assert stored is not None
            stored.record = d.record
            claim = Claim(Outcome.RECOVER, TENANT, key, stored.token, d.record.state)
        elif d.outcome == Outcome.REPLAY:
            claim = Claim(Outcome.REPLAY, TENANT, key, response=d.record.response)
        elif d.outcome == Outcome.CONFLICT:
            claim = Claim(Outcome.CONFLICT, TENANT, key, retry_after_s=d.retry_after_s)
        else:
            claim = Claim(Outcome.MISMATCH, TENANT, key)
        yield self.op()
        return claim

    def finish(self, claim: Claim, response: StoredResponse) -> Generator[simpy.Event, Any, StoredResponse]:
        stored = self.hashes.get(claim.key)
        result = response
        if stored is not None and stored.token == claim.token:
            if stored.record.state == State.FINISHED:
                assert stored.record.response is not None
                result = stored.record.response
            else:
                stored.record = finish_record(stored.record, response)
        yield self.op()
        return result

    def release(self, claim: Claim, now_us: int) -> Generator[simpy.Event, Any, None]:
        stored = self.hashes.get(claim.key)
        if stored is not None and stored.token == claim.token and stored.record.state != State.FINISHED:
            stored.record = release_record(stored.record, now_us)
        yield self.op()


@dataclass
class _Row:
    """A row of idempotency_keys."""

    record: Record
    token: str
    request: PaymentRequest
    charge_id: str | None = None


class PostgresStore(Store):
    """`postgres` (postgres.PostgresIdempotency and completer.run_once) on a dict of rows."""

    def __init__(self, lab: Lab) -> None:
        super().__init__(lab)
        self.rtt_ms = lab.setup.pg_rtt_ms
        self.rows: dict[str, _Row] = {}

    def claim(self, attempt: Attempt, now_us: int) -> Generator[simpy.Event, Any, Claim]:
        lab, key = self.lab, attempt.key
        # INSERT ... ON CONFLICT DO NOTHING: the unique key arbitrates concurrent first requests.
        if key not in self.rows:
            token = lab.new_token()
            self.rows[key] = _Row(decide(None, attempt.fingerprint, now_us, lab.policy).record, token, attempt.request)
            yield self.op()
            return Claim(Outcome.EXECUTE, TENANT, key, token)
        yield self.op()
        d = decide(self.rows[key].record, attempt.fingerprint, now_us, lab.policy)
        yield self.op()
        if d.outcome not in RUNS:
            return self._answer(key, d.outcome, d.record, d.retry_after_s)
        # Decide again under the row lock (SELECT ... FOR UPDATE, then the write): one transaction.
        row = self.rows[key]
        d = decide(row.record, attempt.fingerprint, now_us, lab.policy)
        if d.outcome == Outcome.RECOVER:
            row.record = d.record
            claim = Claim(Outcome.RECOVER, TENANT, key, row.token, d.record.state)
        elif d.outcome == Outcome.EXECUTE:  # past retention: a new request replaces the row
            token = lab.new_token()
            self.rows[key] = _Row(d.record, token, attempt.request)
            claim = Claim(Outcome.EXECUTE, TENANT, key, token)
        else:
            claim = self._answer(key, d.outcome, d.record, d.retry_after_s)
        yield lab.hop(2 * self.rtt_ms)
        return claim

    @staticmethod
    def _answer(key: str, outcome: Outcome, record: Record, retry_after_s: int) -> Claim:
        response = record.response if outcome == Outcome.REPLAY else None
        return Claim(outcome, TENANT, key, response=response, retry_after_s=retry_after_s)

    def _row(self, claim: Claim) -> _Row | None:
        """The row this claim's token names (WHERE token = $1)."""
        row = self.rows.get(claim.key)
        return row if row is not None and row.token == claim.token else None

    def pay(self, worker: Worker | _NoCrash, claim: Claim, request: PaymentRequest, now_us: int,
            fault: FaultMode | None) -> Generator[simpy.Event, Any, Answer]:
        lab = self.lab
        if claim.state == State.STARTED:
            charged = yield from lab.charge(claim, request, fault)
            if charged is TIMED_OUT:
                yield from self.release(claim, now_us)
                return GATEWAY_TIMEOUT
            if charged is DECLINED:
                return _answer((yield from self.finish(claim, declined_response())))
            worker.checkpoint(CHARGED)
            # Phase 2 in one statement: the compare-and-set on `started`, and the payment only if it won.
            row, paid = self._row(claim), None
            if row is not None and row.record.state == State.STARTED:
                row.record = advance(row.record, State.CHARGE_CREATED)
                row.charge_id = charged.id
                paid = lab.payment_row(claim.key, charged)
            yield self.op()
            worker.checkpoint(RECORDED)
            if paid is not None:
                return _answer((yield from self.finish(claim, payment_response(paid))))
        # Resuming from charge_created, or another holder of this claim recorded the charge first.
        row = self._row(claim)
        paid = lab.payments.get(row.charge_id) if row is not None and row.charge_id else None
        yield self.op()
        if paid is not None:
            return _answer((yield from self.finish(claim, payment_response(paid))))
        assert row is not None and row.record.response is not None, "no reaper runs: a claim never loses its row"
        yield self.op()
        return _answer(row.record.response)

    def finish(self, claim: Claim, response: StoredResponse) -> Generator[simpy.Event, Any, StoredResponse]:
        row = self._row(claim)
        result = response
        if row is not None:
            if row.record.state == State.FINISHED:
                assert row.record.response is not None
                result = row.record.response
            else:
                row.record = finish_record(row.record, response)
        yield self.op()
        return result

    def release(self, claim: Claim, now_us: int) -> Generator[simpy.Event, Any, None]:
        row = self._row(claim)
        if row is not None and row.record.state != State.FINISHED:
            row.record = release_record(row.record, now_us)
        yield self.op()

    # --- the completer

    def start(self) -> None:
        self.lab.env.process(self._completer())

    def _completer(self) -> Generator[simpy.Event, Any, None]:
        while True:
            yield self.lab.hop(self.lab.setup.completer_interval_s * 1000)
            yield from self.run_once()

    def abandoned(self, now_us: int) -> list[str]:
        """Unfinished claims whose lock has run out and that are not yet expired, oldest lock first."""
        found = [(r.record.locked_until_us, k) for k, r in self.rows.items()
                 if r.record.state != State.FINISHED and r.record.locked_until_us <= now_us < r.record.expires_at_us]
        return [k for _, k in sorted(found)[:COMPLETER_BATCH]]

    def run_once(self) -> Generator[simpy.Event, Any, int]:
        """completer.run_once: take over each abandoned claim (RECOVER) and resume its payment."""
        lab = self.lab
        now_us = lab.now_us()
        candidates = self.abandoned(now_us)
        yield self.op()
        done = 0
        for key in candidates:
            # take_over: decide and apply under the row lock, in one transaction.
            row = self.rows[key]
            d = decide(row.record, row.record.fingerprint, now_us, lab.policy)
            if d.outcome == Outcome.RECOVER:
                row.record = d.record
            yield lab.hop(2 * self.rtt_ms)
            if d.outcome != Outcome.RECOVER:  # a retry recovered it first, or it finished meanwhile
                continue
            claim = Claim(Outcome.RECOVER, TENANT, key, row.token, row.record.state)
            answer = yield from self.pay(NO_CRASH, claim, row.request, now_us, None)
            if answer.status == GATEWAY_TIMEOUT.status:
                continue
            done += 1
        lab.stats.completed_by_completer += done
        return done

    def settle(self) -> Generator[simpy.Event, Any, None]:
        """Let the completer's passes go on until every claim is finished (each lock runs out first)."""
        setup = self.lab.setup
        passes = 0
        while unfinished := sum(1 for r in self.rows.values() if r.record.state != State.FINISHED):
            passes += 1
            if passes * setup.completer_interval_s > 10 * setup.lock_timeout_s + 10:
                raise RuntimeError(f"the completer left {unfinished} claims unfinished long after their locks ran out")
            yield self.lab.hop(setup.completer_interval_s * 1000)


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class RunResult:
    """One run: its history, the final ledger, the checker's verdicts and the counters."""

    design: str
    load_point: float
    seed: int
    history: History
    ledger: LedgerState
    checks: list[CheckResult]
    stats: Stats
    end_us: int

    @property
    def valid(self) -> bool:
        return all(c.valid for c in self.checks)

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def extra_effects(self) -> int:
        """Per key, the larger of (succeeded charges - 1) and (payment rows - 1), when positive, summed."""
        charges = Counter(c.reference for c in self.ledger.charges if c.status == SUCCEEDED)
        payments = Counter(p.idempotency_key for p in self.ledger.payments)
        return sum(max(0, charges[k] - 1, payments[k] - 1) for k in set(charges) | set(payments))

    def per_10k(self, n: int) -> float:
        return PER_10K * n / self.stats.payments if self.stats.payments else float("nan")

    def rows(self, run_id: str) -> list[Row]:
        s = self.stats
        key = RunKey(run_id=run_id, pattern=PATTERN, design=self.design, seed=self.seed, load_point=self.load_point)
        attempts = s.attempts or 1

        def pct(n: int, of: int) -> float:
            return 100.0 * n / of if of else float("nan")

        values: list[tuple[str, float, str]] = [
            ("payments", s.payments, "requests"),
            ("attempts", s.attempts, "requests"),
            ("duplicates_per_10k", self.per_10k(self.extra_effects()), "per_10k"),
            ("effect_violations_per_10k", self.per_10k(self.check("exactly_one_effect").violations), "per_10k"),
            ("orphans_per_10k", self.per_10k(self.check("no_orphan_charges").violations), "per_10k"),
            ("replay_mismatch", self.check("replays_match_first").violations, "requests"),
            ("conflicts_pct", pct(s.conflicts, attempts), "percent"),
            ("replays_pct", pct(s.replays, attempts), "percent"),
            ("timeouts_pct", pct(s.timeouts, attempts), "percent"),
            ("retries_per_request", (s.attempts - s.chains) / s.payments if s.payments else float("nan"), "ratio"),
            ("gave_up_pct", pct(s.gave_up, s.payments), "percent"),
            ("latency_p50", s.latency.percentile_ms(50), "ms"),
            ("latency_p99", s.latency.percentile_ms(99), "ms"),
            ("payment_latency_p99", s.payment_latency.percentile_ms(99), "ms"),
            ("crashes", s.crashes, "count"),
            ("completed_by_completer_per_10k", self.per_10k(s.completed_by_completer), "per_10k"),
            *((c.name, float(c.valid), "bool") for c in self.checks),
            ("checks_valid", float(self.valid), "bool"),
        ]
        return [key.row(ALL_TENANTS, metric, value, unit) for metric, value, unit in values]


def simulate(design: str, load_point: float, seed: int, setup: Setup = SETUP, *,
             schedule: list[tuple[int, str]] | None = None) -> RunResult:
    """One run of one design at one load point and seed (the module docstring describes it);
    `schedule` gives the payments' arrival times instead of the Poisson workload."""
    return Lab(design, setup, load_point, seed).run(schedule)


def simulate_one(design: str, load_point: float, seed: int, *, setup: Setup = SETUP,
                 run_id: str | None = None) -> list[Row]:
    """One run's rows (metrics of the module docstring)."""
    return simulate(design, load_point, seed, setup).rows(run_id or new_run_id(PATTERN, "sim"))


def simulate_as_live(design: str, load_point: float, seed: int, *, setup: Setup | None = None,
                     run_id: str | None = None) -> list[Row]:
    """One run of the live plan (`setup`, default `as_live()`): the `aslive_*` rows. The payments arrive at
    `load_point` x the capacity measured as the live harness does (`measured_capacity_rps`)."""
    setup = setup if setup is not None else as_live()
    schedule = arrivals(workload(load_point, setup, capacity=measured_capacity_rps), seed)
    result = simulate(design, load_point, seed, setup, schedule=schedule)
    rows = [replace(r, metric=AS_LIVE + r.metric) for r in result.rows(run_id or new_run_id(PATTERN, "sim"))
            if r.metric in AS_LIVE_METRICS]
    unresolved = result.stats.gave_up - result.stats.reconciled
    return [*rows, replace(rows[0], metric=f"{AS_LIVE}unresolved", value=float(unresolved), unit="requests")]


def _simulate(design: str, load_point: float, seed: int, params: Mapping[str, Any]) -> list[Row]:
    """A sweep cell: the module's own experiment where the sweep has the load point, the live plan's where the
    live run has it."""
    rows = []
    if load_point in params["load_points"]:
        rows += simulate_one(design, load_point, seed, setup=params["setup"], run_id=params["run_id"])
    live: _AsLive = params["as_live"]
    if load_point in live.load_points and seed < live.seeds:
        rows += simulate_as_live(design, load_point, seed, setup=live.setup, run_id=params["run_id"])
    return rows


@dataclass(frozen=True)
class _AsLive:
    """Where a sweep replays the live plan."""

    setup: Setup
    load_points: tuple[float, ...]
    seeds: int


def run(out: Path, *, quick: bool = False, seeds: int = 5, jobs: int = 2,
        progress: Callable[[int, int], None] | None = None) -> Path:
    """Sweep DESIGNS x LOAD_POINTS x seeds, and the live plan (`as_live`) at the live run's load points and
    duration (quick: `LIVE_PLAN.quick_*`, as `saaslab load --quick`); write `out/sim/results.csv` and run.json;
    return the CSV.

    `quick` shortens each run (DURATION_S["quick"]); designs, load points and seeds are unchanged.
    """
    setup = replace(SETUP, duration_s=DURATION_S["quick" if quick else "full"])
    live = _AsLive(as_live(quick=quick), LIVE_PLAN.quick_load_points if quick else LIVE_PLAN.load_points,
                   seeds if quick else min(seeds, AS_LIVE_SEEDS))
    run_id = new_run_id(PATTERN, "sim")
    load_points = tuple(LOAD_POINTS)
    cells = tuple(sorted({*load_points, *live.load_points}))
    rows = sweep(_simulate, designs=DESIGNS, load_points=cells, seeds=range(seeds),
                 params={"run_id": run_id, "setup": setup, "load_points": load_points, "as_live": live}, jobs=jobs,
                 progress=progress)
    parameters = {
        "setup": setup.parameters(),
        "as_live": {"setup": {**live.setup.parameters(), "measured_capacity_rps": measured_capacity_rps(live.setup)},
                    "load_points": list(live.load_points), "seeds": list(range(live.seeds)),
                    "plan": asdict(LIVE_PLAN)},
        "designs": list(DESIGNS),
        "load_points": list(load_points),
        "seeds": list(range(seeds)),
        "quick": quick,
        "jobs": jobs,
    }
    return write_run(out / "sim", run_id=run_id, pattern=PATTERN, source="sim", rows=rows, parameters=parameters)
