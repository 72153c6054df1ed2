"""The idempotency simulation's parameters: the designs and load points, the model's knobs (`Setup`), the
live load test's plan (`LivePlan`) and the workload both faces share (the package docstring says what each
knob does)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from reference_impl.idempotency.core import CHARGED, CHECKPOINTS, RECORDED
from reference_impl.idempotency.payments import PaymentRequest
from scenarios.kernel.workload import TenantSpec, Workload

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
    (the run configuration's `workload` overrides still apply: loadtests/common/runconfig.py),
    saaslab/live/idempotency.py its service, load
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
