"""The sagas simulation's parameters: designs, load points, fault conditions, the model's knobs (`Setup`),
the orders both faces send, and how a metric's name carries the fault condition it was measured under
(the package docstring says what each knob does)."""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from typing import Any

from reference_impl.sagas.core import Item, Order, SagaPolicy
from saaslab.patterns.sagas import DESIGN, SagaSettings
from scenarios.kernel.workload import TenantSpec, Workload, zipf_weights

PATTERN = "sagas"
DESIGNS = tuple(d.name for d in DESIGN.designs)
"""orchestration, choreography, twopc, unsafe: as `SAASLAB_SAGA` spells them."""
UNSAFE = next(d.name for d in DESIGN.designs if d.unsafe)
LOAD_POINTS = (0.3, 0.6, 0.9)
"""Offered orders per second as a fraction of `capacity_rps(setup)`."""
LIVE_LOAD_POINT = LOAD_POINTS[0]
"""The load `saaslab load sagas` offers (loadtests/sagas.py): a swept one, so the live cell has a simulated twin."""
FAILURE_RATES = (0.0, 0.05)
"""Share of participant operation attempts that fail: half before the effect (`error`), half after it with the
answer lost (`timeout`: the driver waits out the step timeout)."""
CRASH_RATES = (0.0, 1.0)
"""Crashes per second of the process that drives the sagas (orchestrator, coordinator, the choreography's
relays and consumers, the unsafe writer), while orders arrive."""
DURATION_S = {"full": 6.0, "quick": 1.0}
TENANT = "acme"
CURRENCY = "EUR"
PER_10K = 10_000
EPOCH_US = 1_700_000_000_000_000
"""Simulated time 0 on the sagas' clock: a real wall-clock instant, so `core` sees plausible times."""

_SETTINGS = SagaSettings()
"""The service's defaults (saaslab/patterns/sagas.py): the model times out, retries and recovers as it does."""


@dataclass(frozen=True)
class Setup:
    """Every knob of one run besides design, load point, seed and fault condition."""

    duration_s: float = DURATION_S["full"]
    skus: int = 50
    zipf_s: float = 1.1
    """SKU popularity: the hottest SKUs contend for their row locks."""
    p_two_items: float = 0.3
    """Share of orders with two different SKUs (else one); one unit each."""
    stock_cover: float = 0.9
    """Each SKU is stocked with this share of its expected demand, so its last orders are refused (out of stock)
    and compensate for honest reasons."""
    p_decline: float = 0.02
    """Share of cards the provider declines: the charge is refused and the reservation compensated."""
    connections: int = 4
    """Per participant database (and the coordinator's): a transaction holds one for its statements."""
    rtt_ms: float = 0.5
    """A statement's network round trip to its database."""
    statement_ms: float = 0.3
    """Mean (exponential) execution time of a statement at the database."""
    provider_ms: float = 15.0
    provider_jitter_ms: float = 5.0
    """The payment provider's call: `provider_ms` + exponential jitter of this mean; the charge happens halfway."""
    redis_rtt_ms: float = 0.3
    """A Redis Streams round trip (XADD, XACK, XAUTOCLAIM) and a blocked consumer's delivery."""
    relay_poll_ms: float = 10.0
    """choreography: how often an outbox relay looks for unsent rows."""
    restart_ms: float = 200.0
    """A crashed process is back this long after it died."""
    step_timeout_s: float = _SETTINGS.saga_step_timeout_s
    retry_policy: str = _SETTINGS.saga_retry_policy
    retry_base_ms: float = _SETTINGS.saga_retry_base_ms
    retry_cap_ms: float = _SETTINGS.saga_retry_cap_ms
    max_attempts: int = _SETTINGS.saga_max_attempts
    recovery_interval_s: float = _SETTINGS.saga_recovery_interval_s
    lease_s: float = _SETTINGS.saga_lease_s
    visibility_timeout_s: float = _SETTINGS.saga_visibility_timeout_s
    drain_s: float = 60.0
    """After the last arrival, how long the run may go on for sagas to finish (faults have stopped)."""

    def policy(self) -> SagaPolicy:
        """The step machine's timeouts and retries, built as the service builds them (designs.policy_of)."""
        return SagaPolicy.of(step_timeout_s=self.step_timeout_s, policy=self.retry_policy, base_ms=self.retry_base_ms,
                             cap_ms=self.retry_cap_ms, max_attempts=self.max_attempts)

    def parameters(self) -> dict[str, Any]:
        return {**asdict(self), "capacity_rps": capacity_rps(self)}


SETUP = Setup()


def charge_ms(setup: Setup = SETUP) -> float:
    """Mean time a charge holds its payments connection: BEGIN, upsert, the provider call, update, COMMIT."""
    return 4 * (setup.rtt_ms + setup.statement_ms) + setup.provider_ms + setup.provider_jitter_ms


def capacity_rps(setup: Setup = SETUP) -> float:
    """Orders per second the payments database can take: its connections over a charge's mean hold (the
    bottleneck of every design: the provider call runs inside the payments transaction)."""
    return setup.connections * 1000.0 / charge_ms(setup)


def workload(load_point: float, setup: Setup = SETUP) -> Workload:
    """Checkouts: Poisson at `load_point` x `capacity_rps(setup)` for `duration_s`."""
    return Workload(tenants=(TenantSpec(TENANT, rate=load_point * capacity_rps(setup)),), process="poisson",
                    duration_s=setup.duration_s, params={"load_point": load_point})


def sku(k: int) -> str:
    return f"sku-{k:03d}"


def stock_levels(load_point: float, setup: Setup = SETUP) -> dict[str, int]:
    """Units of each SKU at the start: `stock_cover` of its expected demand over the run (at least one)."""
    orders = load_point * capacity_rps(setup) * setup.duration_s
    return {sku(k): max(1, round(setup.stock_cover * orders * w * (1 + setup.p_two_items)))
            for k, w in enumerate(zipf_weights(setup.skus, setup.zipf_s))}


class Orders:
    """The n-th checkout of a run: its SKUs (Zipf), amount and whether its card is declined; the same orders
    for every design of a (seed, load point)."""

    def __init__(self, seed: int, load_point: float, setup: Setup = SETUP) -> None:
        self._rng = random.Random(f"sagas:orders:{seed}:{load_point}")
        self._setup = setup
        self._skus = [sku(k) for k in range(setup.skus)]
        self._weights = zipf_weights(setup.skus, setup.zipf_s)

    def next(self, n: int) -> tuple[Order, bool]:
        """(the order, whether its card is declined)."""
        rng = self._rng
        first = rng.choices(self._skus, self._weights)[0]
        items = [Item(first, 1)]
        if rng.random() < self._setup.p_two_items:
            second = first
            while second == first:
                second = rng.choices(self._skus, self._weights)[0]
            items.append(Item(second, 1))
        order = Order(f"ord-{n:07d}", TENANT, tuple(items), 1_000 + (n * 37) % 9_000, CURRENCY)
        return order, rng.random() < self._setup.p_decline


# ---------------------------------------------------------------------------------------------
# Fault conditions in metric names

_CONDITION = re.compile(r"^(?P<metric>[a-z0-9_]+)@fail(?P<failure>[0-9.e-]+)/crash(?P<crash>[0-9.e-]+)$")


@dataclass(frozen=True, order=True)
class Condition:
    """A fault condition of the sweep: participant failure rate and crash rate (per second)."""

    failure: float
    crash: float

    @property
    def suffix(self) -> str:
        return f"@fail{self.failure:g}/crash{self.crash:g}"

    def metric(self, name: str) -> str:
        """`latency_p99` under this condition: `latency_p99@fail0.05/crash0.5`."""
        return name + self.suffix

    @property
    def label(self) -> str:
        parts = ([f"{100 * self.failure:g}% failures"] if self.failure else []) + (
            [f"{self.crash:g} crash{'' if self.crash == 1 else 'es'}/s"] if self.crash else [])
        return " and ".join(parts) or "no faults"


CALM = Condition(0.0, 0.0)
CONDITIONS = tuple(Condition(f, c) for f in FAILURE_RATES for c in CRASH_RATES)


def split_metric(metric: str) -> tuple[str, Condition | None]:
    """('latency_p99', Condition(0.05, 0.5)) from 'latency_p99@fail0.05/crash0.5'; (metric, None) without one."""
    m = _CONDITION.match(metric)
    if m is None:
        return metric, None
    return m["metric"], Condition(float(m["failure"]), float(m["crash"]))
