"""Retries scenario: which backoff policy does the least work under contention, and which retry
designs keep a system from staying collapsed after a latency spike.

Every retry decision is made by the client cores in `reference_impl.retries.core` (the load
harness retries with the same code). Two experiments; metrics per (design, load point, seed),
tenant "*":

* contention (Marc Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015): `load_point`
  clients each update one row once under optimistic concurrency: read the version, write with
  it; a write with a stale version fails, the client backs off by its policy and reads again.
  Every message takes |Normal(10 ms, 2 ms)| on the network; base 5 ms, cap 2000 ms; clients never
  give up. Designs: the policies of `CONTENTION_POLICIES`. One seed is a batch of `trials` trials
  (Brooker averaged 100 trials; 5 seeds x `TRIALS["full"]` trials match that, `--quick` runs fewer):
  - `contention_calls`: write calls until every client succeeded, mean over the seed's trials
    (requests; Brooker's "work")
  - `contention_completion_ms`: time until the last client's successful write reply arrived, mean
    over the seed's trials (ms)

* metastability: an open system. Requests arrive as a Poisson process at `load_point` x
  `CAPACITY_RPS` (the fraction of capacity offered), each from one of `CLIENT_HOSTS` client hosts
  picked at random; each host has its own retry budget and circuit breaker where the design has
  them. The server is the kernel's FIFO `Server` with `SLOTS` slots and service times of
  `SERVICE_MS` (+ exponential overhead). A client gives up on an attempt after `TIMEOUT_MS`; the
  server still finishes the abandoned attempt (wasted work). At `trigger_at_s` a latency spike
  multiplies service time by `SPIKE_FACTOR` for a trigger length of T seconds (`TRIGGERS_S`);
  arrivals then go on for `recovery_s` + `hold_s` more seconds (`Timeline`: `TIMELINES["full"]`
  is 5, 10 and 5 s; `--quick` shortens it, and so does the live run's quick mode, so that quick
  cells of both sources compare). Designs: `META_DESIGNS`, a backoff policy with
  `META_MAX_ATTEMPTS` attempts, alone or `+budget` / `+breaker`, and `single_attempt` (never retried).

  Recovery, precisely: a request is *served* if one of its attempts answered within the timeout.
  Requests are binned by arrival in 1 s bins; a bin's goodput share is served / offered. The
  system *recovered* if every bin from `recovery_s` after the trigger ended to the end of arrivals
  (the hold window, `hold_s` long) has a goodput share of at least `RECOVERED_SHARE`. It is
  *collapsed* (stayed collapsed: metastable) if over the hold window, long after the trigger is
  gone, fewer than `COLLAPSED_SHARE` of the requests offered were served. In between (not every
  hold bin back at `RECOVERED_SHARE`, but most requests served) it is still *draining*.

  Per trigger length T (the suffix `_t<T>s`, e.g. `meta_recovered_t4s`; see `trigger_metric`):
  - `meta_recovered_t<T>s`: 1 if recovered (bool)
  - `meta_collapsed_t<T>s`: 1 if collapsed (bool)
  - `meta_recovery_s_t<T>s`: time from the end of the trigger to the start of the first bin from
    which every bin has a goodput share >= `RECOVERED_SHARE`, NaN when none (s)
  - `meta_goodput_after_pct_t<T>s`: goodput share over the hold stretch (percent)
  - `meta_attempt_load_after_t<T>s`: attempts sent per second over the hold stretch, over
    capacity (x_capacity)
  - `meta_amplification_t<T>s`: attempts sent per request offered, whole run (ratio)
  - `meta_goodput_pct_at<S>s_t<T>s`: the goodput share of the requests that arrived in second S of
    the run (S from 1 to the end of arrivals; the trigger starts at `trigger_at_s`) (percent)
  And once per run (the same for every T, as the spike starts after it):
  - `meta_goodput_before_pct`: goodput share from 1 s to `trigger_at_s` (percent)

`run` sweeps both experiments; 95% confidence intervals come from the seeds.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import simpy

from reference_impl.retries.core import (
    BROOKER_POLICIES,
    DEFAULT_BASE_US,
    DEFAULT_CAP_US,
    POLICIES,
    Backoff,
    BreakerConfig,
    BudgetState,
    CircuitBreaker,
    RetryBudget,
    make_policy,
)
from reference_impl.tenancy.core import make_scheduler
from saaslab.results import ALL_TENANTS, Row, new_run_id, write_run
from scenarios.kernel import US_PER_MS, US_PER_S
from scenarios.kernel.faults import Fault, inject
from scenarios.kernel.metrics import RunKey
from scenarios.kernel.server import Server, service_time
from scenarios.kernel.sweep import sweep
from scenarios.kernel.workload import TenantSpec, Workload, arrivals

PATTERN = "retries"

# ---------------------------------------------------------------------------------------------
# Contention: Brooker's optimistic-concurrency experiment

CONTENTION_POLICIES = (*BROOKER_POLICIES, "fixed")
"""Brooker's five policies, plus a fixed wait of `base` for contrast."""
CLIENTS = {"full": (10, 20, 30, 40, 50, 60, 70, 80, 90, 100), "quick": (10, 25, 50, 100)}
TRIALS = {"full": 20, "quick": 8}
"""Trials per seed: 5 seeds x 20 = Brooker's 100 trials per point."""
NET_MEAN_US = 10_000
NET_SD_US = 2_000


@dataclass(frozen=True, slots=True)
class Trial:
    calls: int
    completion_us: int


def contention_trial(policy: Backoff, clients: int, rng: random.Random) -> Trial:
    """One trial: `clients` clients start at once and each updates the row once."""
    env = simpy.Environment()
    version = 0
    calls = 0
    completion = 0

    def net() -> int:
        return abs(round(rng.gauss(NET_MEAN_US, NET_SD_US)))

    def client() -> Generator[simpy.Event, Any, None]:
        nonlocal version, calls, completion
        attempt = previous = 0
        yield env.timeout(net())  # the first read request travels to the database
        while True:
            seen = version  # the read, at the database
            yield env.timeout(net() + net())  # read reply, then the write request
            calls += 1
            if version == seen:
                version += 1
                completion = max(completion, int(env.now) + net())
                return
            attempt += 1
            delay = policy.next_delay_us(attempt, previous, rng)
            assert delay is not None, "contention clients never give up"
            previous = delay
            yield env.timeout(net() + delay + net())  # write reply, back off, next read request

    for _ in range(clients):
        env.process(client())
    env.run()
    return Trial(calls, completion)


def simulate_contention(policy: str, clients: int, seed: int, *, trials: int = TRIALS["full"],
                        run_id: str | None = None) -> list[Row]:
    """`trials` trials of one policy at one client count; rows are means over them."""
    backoff = make_policy(policy, base_us=DEFAULT_BASE_US, cap_us=DEFAULT_CAP_US)
    results = [contention_trial(backoff, clients, random.Random(f"contention:{seed}:{clients}:{t}"))
               for t in range(trials)]
    key = RunKey(run_id=run_id or new_run_id(PATTERN, "sim"), pattern=PATTERN, design=policy, seed=seed,
                 load_point=clients)
    return [
        key.row(ALL_TENANTS, "contention_calls", sum(r.calls for r in results) / trials, "requests"),
        key.row(ALL_TENANTS, "contention_completion_ms",
                sum(r.completion_us for r in results) / trials / US_PER_MS, "ms"),
    ]


# ---------------------------------------------------------------------------------------------
# Metastability: an open system with client timeouts, retries and a latency spike

SLOTS = 4
SERVICE_MS = 35.0
OVERHEAD_MS = 5.0
CAPACITY_RPS = SLOTS * 1000.0 / (SERVICE_MS + OVERHEAD_MS)
TIMEOUT_MS = 1000
SPIKE_FACTOR = 5.0
RECOVERED_SHARE = 0.9
COLLAPSED_SHARE = 0.5
"""Below this goodput share over the hold window a run stayed collapsed (docstring, "Recovery, precisely")."""
CLIENT_HOSTS = 5
META_MAX_ATTEMPTS = 3
META_BASE_US = 100 * US_PER_MS
"""Backoff base in the open system: comparable to the timeout, to give backoff its best chance."""
META_BUDGET = RetryBudget(ratio_pct=10, min_per_s=1, burst=10)
META_BREAKER = BreakerConfig(fail_max=5, reset_timeout_us=2 * US_PER_S, half_open_trials=1)
SINGLE_ATTEMPT = "single_attempt"
META_DESIGNS = (SINGLE_ATTEMPT, "no_backoff", "exponential", "full_jitter", "full_jitter+budget", "full_jitter+breaker")
LOADS = {"full": (0.3, 0.5, 0.7, 0.9), "quick": (0.3, 0.6, 0.9)}
TRIGGERS_S = {"full": (1, 2, 4, 8), "quick": (2, 4)}
CLIENT_TENANT = "clients"


@dataclass(frozen=True)
class Timeline:
    """When the spike starts, and how long after it ends recovery may take and must then hold (s)."""

    trigger_at_s: int
    recovery_s: int
    hold_s: int


TIMELINES = {"full": Timeline(trigger_at_s=5, recovery_s=10, hold_s=5),
             "quick": Timeline(trigger_at_s=2, recovery_s=2, hold_s=1)}
TIMELINE = TIMELINES["full"]
TRIGGER_AT_S, RECOVERY_S, HOLD_S = TIMELINE.trigger_at_s, TIMELINE.recovery_s, TIMELINE.hold_s


@dataclass(frozen=True)
class ClientDesign:
    """How clients of the open system retry: a policy, and optionally a budget or a breaker."""

    policy: Backoff
    budget: RetryBudget | None = None
    breaker: BreakerConfig | None = None


def client_design(name: str) -> ClientDesign:
    """`single_attempt`, or a policy name optionally followed by `+budget` or `+breaker`."""
    if name == SINGLE_ATTEMPT:
        return ClientDesign(make_policy("no_backoff", max_attempts=1))
    policy, _, extra = name.partition("+")
    if policy not in POLICIES or extra not in ("", "budget", "breaker"):
        raise ValueError(f"unknown client design {name!r}: use {SINGLE_ATTEMPT} or a policy ({', '.join(POLICIES)}) "
                         "optionally followed by +budget or +breaker")
    backoff = make_policy(policy, base_us=META_BASE_US, cap_us=DEFAULT_CAP_US, max_attempts=META_MAX_ATTEMPTS)
    return ClientDesign(backoff, budget=META_BUDGET if extra == "budget" else None,
                        breaker=META_BREAKER if extra == "breaker" else None)


@dataclass
class OpenRun:
    """Per 1 s bin from t=0: requests offered and served (by arrival), attempts sent (by send time).

    The live run fills the same bins from its measurements, so both sources judge a run by this code.
    """

    trigger_s: int
    offered: list[int]
    served: list[int]
    attempts: list[int]
    timeline: Timeline = TIMELINE

    @property
    def trigger_end_s(self) -> int:
        return self.timeline.trigger_at_s + self.trigger_s

    @property
    def arrivals_end_s(self) -> int:
        return self.trigger_end_s + self.timeline.recovery_s + self.timeline.hold_s

    def share(self, start_s: int, end_s: int) -> float:
        """Goodput share of the requests that arrived in [start_s, end_s)."""
        offered = sum(self.offered[start_s:end_s])
        return sum(self.served[start_s:end_s]) / offered if offered else float("nan")

    def recovery_s(self) -> float:
        """Seconds from the trigger's end to the first bin from which every bin keeps the share."""
        first = None
        for b in range(self.arrivals_end_s - 1, self.trigger_end_s - 1, -1):
            share = self.share(b, b + 1)
            if not math.isnan(share) and share < RECOVERED_SHARE:
                break
            first = b
        return float("nan") if first is None else float(first - self.trigger_end_s)

    @property
    def hold_start_s(self) -> int:
        return self.trigger_end_s + self.timeline.recovery_s

    def recovered(self) -> bool:
        r = self.recovery_s()
        return not math.isnan(r) and r <= self.timeline.recovery_s

    def goodput_after(self) -> float:
        """Goodput share over the hold window."""
        return self.share(self.hold_start_s, self.arrivals_end_s)

    def attempt_load_after(self, capacity_rps: float = CAPACITY_RPS) -> float:
        return sum(self.attempts[self.hold_start_s:self.arrivals_end_s]) / self.timeline.hold_s / capacity_rps

    def collapsed(self) -> bool:
        """Stayed collapsed: the hold window's goodput share is below `COLLAPSED_SHARE` (a window with no
        request offered says nothing, so it is not collapsed)."""
        share = self.goodput_after()
        return not self.recovered() and not math.isnan(share) and share < COLLAPSED_SHARE

    def state(self) -> str:
        """`recovered`, `collapsed` or (neither) `draining`."""
        return "recovered" if self.recovered() else "collapsed" if self.collapsed() else "draining"

    def amplification(self) -> float:
        offered = sum(self.offered)
        return sum(self.attempts) / offered if offered else float("nan")


def request_lifetime_us(design: ClientDesign) -> int:
    """The longest a request can stay open: every attempt times out and every wait is the cap."""
    attempts = design.policy.max_attempts or 1
    return attempts * TIMEOUT_MS * US_PER_MS + (attempts - 1) * design.policy.cap_us


def open_run(design: str, load: float, trigger_s: int, seed: int, timeline: Timeline = TIMELINE) -> OpenRun:
    """One run of the open system under `design` at `load` x capacity with a `trigger_s` second spike."""
    spec = client_design(design)
    env = simpy.Environment()
    rng = random.Random(f"meta:{seed}:{load}:{trigger_s}")
    server = Server(env, lambda: make_scheduler("fifo", SLOTS),
                    service_time(SERVICE_MS, OVERHEAD_MS, np.random.default_rng([seed, 0x2E7])),
                    cost_us=round((SERVICE_MS + OVERHEAD_MS) * US_PER_MS))
    inject(env, [Fault("spike", timeline.trigger_at_s, trigger_s, "latency", {"factor": SPIKE_FACTOR})], [server])
    end_s = timeline.trigger_at_s + trigger_s + timeline.recovery_s + timeline.hold_s
    out = OpenRun(trigger_s, [0] * end_s, [0] * end_s, [0] * (end_s + 1 + request_lifetime_us(spec) // US_PER_S),
                  timeline)
    clients = _Clients(env, server, spec, rng, out)
    wl = Workload(tenants=(TenantSpec(CLIENT_TENANT, rate=load * CAPACITY_RPS),), process="poisson", duration_s=end_s)
    env.process(clients.drive(arrivals(wl, seed)))
    env.run(until=end_s * US_PER_S + request_lifetime_us(spec) + 1)
    return out


@dataclass
class _Clients:
    env: simpy.Environment
    server: Server
    design: ClientDesign
    rng: random.Random
    out: OpenRun
    budgets: list[BudgetState | None] = field(init=False)
    breakers: list[CircuitBreaker] = field(init=False)

    def __post_init__(self) -> None:
        self.budgets = [None] * CLIENT_HOSTS
        self.breakers = [CircuitBreaker(self.design.breaker) for _ in range(CLIENT_HOSTS)]

    def drive(self, schedule: Sequence[tuple[int, str]]) -> Generator[simpy.Event, Any, None]:
        for t_us, _tenant in schedule:
            if t_us > self.env.now:
                yield self.env.timeout(t_us - self.env.now)
            self.env.process(self.request(self.rng.randrange(CLIENT_HOSTS)))

    def request(self, host: int) -> Generator[simpy.Event, Any, None]:
        env, d = self.env, self.design
        arrival_bin = int(env.now) // US_PER_S
        self.out.offered[arrival_bin] += 1
        breaker = self.breakers[host] if d.breaker else None
        attempt = previous = 0
        while True:
            if breaker is not None and not breaker.allow(int(env.now)):
                return  # failed fast: the breaker is open
            attempt += 1
            self.out.attempts[int(env.now) // US_PER_S] += 1
            call = self.server.request(CLIENT_TENANT)
            yield call | env.timeout(TIMEOUT_MS * US_PER_MS)
            now = int(env.now)
            if call.triggered and call.ok and call.value.ok:
                self.out.served[arrival_bin] += 1
                if breaker is not None:
                    breaker.record_success(now)
                if d.budget is not None:
                    self.budgets[host] = d.budget.on_success(self.budgets[host], now)
                return
            if breaker is not None:
                breaker.record_failure(now)
            delay = d.policy.next_delay_us(attempt, previous, self.rng)
            if delay is None:
                return
            if d.budget is not None:
                allowed, self.budgets[host] = d.budget.try_retry(self.budgets[host], now)
                if not allowed:
                    return
            previous = delay
            if delay:
                yield env.timeout(delay)


_TRIGGER_SUFFIX = re.compile(r"^(?P<name>.+)_t(?P<trigger>\d+)s$")


def trigger_metric(name: str, trigger_s: int) -> str:
    """`meta_recovered` and 4 -> `meta_recovered_t4s`."""
    return f"{name}_t{trigger_s}s"


def split_trigger_metric(metric: str) -> tuple[str, int] | None:
    """`meta_recovered_t4s` -> (`meta_recovered`, 4); None for a metric without a trigger suffix."""
    m = _TRIGGER_SUFFIX.match(metric)
    return (m["name"], int(m["trigger"])) if m else None


def goodput_metric(second: int, trigger_s: int) -> str:
    """The goodput share of the requests that arrived in second `second` of a run with a `trigger_s` s spike."""
    return trigger_metric(f"meta_goodput_pct_at{second}s", trigger_s)


_AT_SECOND = re.compile(r"^meta_goodput_pct_at(?P<second>\d+)s$")


def goodput_second(name: str) -> int | None:
    """`meta_goodput_pct_at7s` (a trigger metric's name, its suffix split off) -> 7; None for other names."""
    m = _AT_SECOND.match(name)
    return int(m["second"]) if m else None


def open_run_rows(key: RunKey, r: OpenRun, *, first: bool, capacity_rps: float = CAPACITY_RPS) -> list[Row]:
    """The rows of one run of the open system (module docstring); `first` adds the per-run baseline.

    The live run writes its measured runs with this same function (its capacity measured, not assumed)."""
    rows: list[Row] = []
    if first:
        rows.append(key.row(ALL_TENANTS, "meta_goodput_before_pct", 100.0 * r.share(1, r.timeline.trigger_at_s),
                            "percent"))
    trigger = r.trigger_s
    values = (("meta_recovered", float(r.recovered()), "bool"),
              ("meta_collapsed", float(r.collapsed()), "bool"),
              ("meta_recovery_s", r.recovery_s(), "s"),
              ("meta_goodput_after_pct", 100.0 * r.goodput_after(), "percent"),
              ("meta_attempt_load_after", r.attempt_load_after(capacity_rps), "x_capacity"),
              ("meta_amplification", r.amplification(), "ratio"))
    rows += [key.row(ALL_TENANTS, trigger_metric(name, trigger), value, unit) for name, value, unit in values]
    rows += [key.row(ALL_TENANTS, goodput_metric(s, trigger), 100.0 * r.share(s, s + 1), "percent")
             for s in range(1, r.arrivals_end_s)]
    return rows


def simulate_metastability(design: str, load: float, seed: int, *, triggers_s: Sequence[int] = TRIGGERS_S["full"],
                           timeline: Timeline = TIMELINE, run_id: str | None = None) -> list[Row]:
    """One client design at one load and seed, a run per trigger length; rows as in the module docstring."""
    key = RunKey(run_id=run_id or new_run_id(PATTERN, "sim"), pattern=PATTERN, design=design, seed=seed,
                 load_point=load)
    rows: list[Row] = []
    for i, trigger in enumerate(triggers_s):
        rows += open_run_rows(key, open_run(design, load, trigger, seed, timeline), first=i == 0)
    return rows


# ---------------------------------------------------------------------------------------------
# The sweep


def _simulate_contention(design: str, load_point: float, seed: int, params: Mapping[str, Any]) -> list[Row]:
    return simulate_contention(design, int(load_point), seed, trials=params["trials"], run_id=params["run_id"])


def _simulate_metastability(design: str, load_point: float, seed: int, params: Mapping[str, Any]) -> list[Row]:
    return simulate_metastability(design, load_point, seed, triggers_s=params["triggers_s"],
                                  timeline=Timeline(**params["timeline"]), run_id=params["run_id"])


def run(out: Path, *, quick: bool = False, seeds: int = 5, jobs: int = 2,
        progress: Callable[[int, int], None] | None = None) -> Path:
    """Both experiments over `seeds` seeds; write `out/sim/results.csv` and run.json; return the CSV.

    `quick` runs fewer client counts and trials per seed, and a smaller metastability map.
    """
    size = "quick" if quick else "full"
    run_id = new_run_id(PATTERN, "sim")
    clients, loads, triggers, timeline = CLIENTS[size], LOADS[size], TRIGGERS_S[size], TIMELINES[size]
    contention_tasks = len(CONTENTION_POLICIES) * len(clients) * seeds
    total = contention_tasks + len(META_DESIGNS) * len(loads) * seeds

    def part(offset: int) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, _n: progress(offset + done, total)

    rows = sweep(_simulate_contention, designs=CONTENTION_POLICIES, load_points=clients, seeds=range(seeds),
                 params={"run_id": run_id, "trials": TRIALS[size]}, jobs=jobs, progress=part(0))
    rows += sweep(_simulate_metastability, designs=META_DESIGNS, load_points=loads, seeds=range(seeds),
                  params={"run_id": run_id, "triggers_s": triggers, "timeline": dataclasses.asdict(timeline)}, jobs=jobs,
                  progress=part(contention_tasks))
    parameters = {
        "contention": {
            "policies": list(CONTENTION_POLICIES), "clients": list(clients), "trials_per_seed": TRIALS[size],
            "network_delay_ms": {"mean": NET_MEAN_US / US_PER_MS, "sd": NET_SD_US / US_PER_MS},
            "base_ms": DEFAULT_BASE_US / US_PER_MS, "cap_ms": DEFAULT_CAP_US / US_PER_MS,
        },
        "metastability": {
            "designs": list(META_DESIGNS), "loads": list(loads), "triggers_s": list(triggers),
            "slots": SLOTS, "service_ms": SERVICE_MS, "overhead_ms": OVERHEAD_MS, "capacity_rps": CAPACITY_RPS,
            "timeout_ms": TIMEOUT_MS, "spike_factor": SPIKE_FACTOR, **dataclasses.asdict(timeline),
            "recovered_share": RECOVERED_SHARE, "collapsed_share": COLLAPSED_SHARE,
            "client_hosts": CLIENT_HOSTS, "max_attempts": META_MAX_ATTEMPTS,
            "base_ms": META_BASE_US / US_PER_MS, "cap_ms": DEFAULT_CAP_US / US_PER_MS,
            "budget": {"ratio_pct": META_BUDGET.ratio_pct, "min_per_s": META_BUDGET.min_per_s,
                       "burst": META_BUDGET.burst},
            "breaker": {"fail_max": META_BREAKER.fail_max, "reset_timeout_ms": META_BREAKER.reset_timeout_us / US_PER_MS,
                        "half_open_trials": META_BREAKER.half_open_trials},
        },
        "seeds": list(range(seeds)),
        "quick": quick,
        "jobs": jobs,
    }
    return write_run(out / "sim", run_id=run_id, pattern=PATTERN, source="sim", rows=rows, parameters=parameters)
