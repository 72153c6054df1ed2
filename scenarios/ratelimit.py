"""Rate-limiting scenario: which algorithm, judged on accuracy, bursts, memory, fairness, clocks and races.

Every decision below is made by the service's own cores (`reference_impl.ratelimit.core`), so the
simulation models the very code the Lua scripts mirror. The policy is `POLICY` (100 requests per
second) unless said otherwise; `load_point` is the offered rate of the heavy (or noisy) tenant as
a multiple of its limit. Designs: `DESIGNS` (the five algorithms and the unsafe `naive`).

Experiments of one (design, load point, seed) and the metrics they write (tenant "*" unless said):

* accuracy: one tenant with bursty on/off arrivals at `load_point` x its limit, decided one at a
  time (so `naive` decides as `fixed_window` here; its race shows under cluster and race).
  Each decision is compared with the exact rule over the algorithm's *own* admissions (a sliding
  log: admit iff fewer than `requests` were admitted in the last `window_us`):
  - `accuracy_offered`, `accuracy_admitted` (requests), `accuracy_rejected_pct` (percent)
  - `accuracy_admitted_vs_exact_pct`: admitted over what an exact sliding window admits of the
    same arrivals (percent; above 100 over-admits, below under-admits)
  - `accuracy_false_admit_pct`: admitted though the exact rule refuses (percent of offered)
  - `accuracy_false_reject_pct`: refused though the exact rule admits (percent of offered). Under
    heavy overload every arrival meets the room a cautious limiter leaves unused, so this grows
    with load; read it with `accuracy_admitted_vs_exact_pct`.
  - `accuracy_max_window_ratio`: most admitted in any span of `window_us`, over `requests` (x_limit)
  - `memory_state_bytes_mean`, `memory_state_bytes_max`: estimated Redis bytes of the tenant's
    limiter key, sampled at each decision (bytes; `core.state_bytes`)
* boundary: an idle tenant sends `load_point` x `requests` requests spread evenly over
  +-10% of a window around a window boundary:
  - `boundary_burst_ratio`: admitted over `requests` (x_limit); the fixed window reaches 2
* neighbour: one noisy tenant at `load_point` x its quota, four quiet ones at half theirs
  (Poisson; `noisy_neighbour` is the workload the load test replays), under `NEIGHBOUR_POLICY`,
  the policy the live load test provisions, so simulated and measured 429 rates compare like
  for like:
  - per tenant (`noisy`, `quiet1`..`quiet4`): `neighbour_rejected_pct` (percent),
    `neighbour_admitted_x_quota` (admitted rate over the quota, x_limit)
  - `neighbour_noisy_rejected_pct`, `neighbour_quiet_rejected_pct` (percent, quiet pooled),
    `neighbour_noisy_admitted_x_quota` (x_limit)
* cluster and skew: the first `DURATIONS_S["skew"]` seconds of the accuracy workload sent through
  `SERVERS` app servers sharing one Redis over a network (each hop `NET_BASE_US` plus jitter),
  each passing its own clock to the limiter; `cluster_*` with agreeing clocks, `skew_*` with
  clocks at -`SKEW_MS`, 0 and +`SKEW_MS`. Judged in true time, as for accuracy:
  - `cluster_false_admit_pct`, `cluster_false_reject_pct`, `skew_false_admit_pct`,
    `skew_false_reject_pct` (percent of offered)
  - `cluster_max_window_ratio`, `skew_max_window_ratio` (x_limit)
  (The service can pass no clock and let the script read Redis's TIME: then skew cannot arise.)
* race: `load_point` x 50 requests of one tenant arrive within 2 ms across the app servers, at a
  limit of 50 per 10 s; strict algorithms decide in one atomic script, `naive` reads the count,
  decides on the app server and writes it back (two round trips):
  - `race_admitted` (requests), `race_admitted_ratio` (admitted over the limit, x_limit)
  - `race_no_over_admission`: 1 if `invariants.no_over_admission` holds on the run's history (bool)

`run` sweeps DESIGNS x LOAD_POINTS x seeds; 95% confidence intervals come from the seeds. The same run
then sweeps the load shedder's designs (`ratelimit_shedding.SHED_DESIGNS`) over the same load points,
read there as offered utilisation, and appends their rows (scenarios/ratelimit_shedding.py lists them).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import simpy

from reference_impl.ratelimit.core import ALGORITHMS, Policy, fixed_window, state_bytes
from reference_impl.ratelimit.invariants import F_DECIDE, decision_value, no_over_admission
from saaslab.history import History
from saaslab.results import ALL_TENANTS, Row, new_run_id, write_run
from scenarios.kernel import US_PER_S
from scenarios.kernel.metrics import RunKey
from scenarios.kernel.sweep import sweep
from scenarios.kernel.workload import TenantSpec, Workload, arrivals
from scenarios.ratelimit_shedding import SHED_DESIGNS
from scenarios.ratelimit_shedding import parameters as shedding_parameters
from scenarios.ratelimit_shedding import simulate_one as simulate_shedding

PATTERN = "ratelimit"
DESIGNS = tuple(ALGORITHMS)
LOAD_POINTS = (0.5, 1.0, 2.0, 10.0)
POLICY = Policy(100, US_PER_S)
EPOCH_US = 1_700_000_000_000_000
"""Simulated time 0 on the app clocks: a real wall-clock instant, aligned to whole seconds."""

HEAVY = "heavy"
NOISY = "noisy"
QUIET = ("quiet1", "quiet2", "quiet3", "quiet4")
QUIET_MULTIPLE = 0.5
BOUNDARY_SPREAD = 0.1
"""The boundary flood covers this fraction of a window on each side of the boundary."""

SERVERS = 3
SKEW_MS = 50
NET_BASE_US = 200
NET_JITTER_MEAN_US = 100
"""One network hop between an app server and Redis: the base plus an exponential jitter."""
RACE_POLICY = Policy(50, 10 * US_PER_S)
RACE_SPREAD_US = 2_000

NEIGHBOUR_POLICY = Policy(100, 5 * US_PER_S)
"""The noisy-neighbour experiment's policy, simulated and live (`loadtests/ratelimit.py`): a quota
of 20 requests/s, so the noisy tenant at 10x and four quiet ones at half their quota offer 240
requests/s, which Locust, the service (2 workers), PostgreSQL and Redis sustain together on 2
cores. The 5 s window holds 100 requests, far above the 50 a quiet tenant sends on average: at
20 per 1 s a Poisson quiet tenant would now and then be refused in its own right."""
LIVE_RACE_POLICY = Policy(RACE_POLICY.requests, 3600 * US_PER_S)
"""The live race's policy: the simulated race's limit over an hour, so no bucket refills (one
request per 72 s) while a burst crosses a busy machine, and the limit is the exact count to expect."""
LIVE_RACE_REQUESTS = 200
"""Requests of the live race, all sent at once across the service's workers."""

DURATIONS_S = {"accuracy": 60.0, "neighbour": 30.0, "skew": 10.0}
QUICK_DURATIONS_S = {"accuracy": 20.0, "neighbour": 5.0, "skew": 4.0}


# ---------------------------------------------------------------------------------------------
# Workloads (shared with the load test)


def heavy_tenant(load_point: float, *, duration_s: float, policy: Policy = POLICY) -> Workload:
    """One tenant at `load_point` x its limit, on/off bursty (twice the mean rate while on)."""
    rate = load_point * policy.requests / policy.window_s
    return Workload(tenants=(TenantSpec(HEAVY, rate=rate),), process="bursty", duration_s=duration_s,
                    on_s=0.5, off_s=0.5, params={"load_point": load_point, "requests": policy.requests,
                                                 "window_s": policy.window_s})


def noisy_neighbour(load_point: float, *, duration_s: float, policy: Policy = POLICY) -> Workload:
    """The noisy tenant at `load_point` x its quota, four quiet ones at half theirs, Poisson.

    The neighbour experiment and the live load test both pass `NEIGHBOUR_POLICY`.
    """
    quota = policy.requests / policy.window_s
    tenants = (TenantSpec(NOISY, rate=load_point * quota),
               *(TenantSpec(q, rate=QUIET_MULTIPLE * quota) for q in QUIET))
    return Workload(tenants=tenants, process="poisson", duration_s=duration_s,
                    params={"load_point": load_point, "quiet_multiple": QUIET_MULTIPLE,
                            "requests": policy.requests, "window_s": policy.window_s})


# ---------------------------------------------------------------------------------------------
# Bookkeeping


class ExactWindow:
    """The exact rule over one tenant's admissions: fewer than `requests` in (t - window, t]."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._admitted: deque[int] = deque()

    def fits(self, t_us: int) -> bool:
        while self._admitted and self._admitted[0] <= t_us - self.policy.window_us:
            self._admitted.popleft()
        return len(self._admitted) < self.policy.requests

    def admit(self, t_us: int) -> None:
        self._admitted.append(t_us)


@dataclass
class Tally:
    """One tenant's decisions, judged against the exact rule in true time."""

    policy: Policy
    offered: int = 0
    admitted: int = 0
    false_admits: int = 0
    false_rejects: int = 0
    bytes_sum: int = 0
    bytes_max: int = 0
    max_window_admits: int = 0
    _exact: ExactWindow = field(init=False, repr=False)
    _recent: deque[int] = field(init=False, repr=False, default_factory=deque)

    def __post_init__(self) -> None:
        self._exact = ExactWindow(self.policy)

    def record(self, t_us: int, allowed: bool) -> None:
        self.offered += 1
        fits = self._exact.fits(t_us)
        if allowed:
            self.admitted += 1
            self.false_admits += not fits
            self._exact.admit(t_us)
            self._recent.append(t_us)
            while self._recent[0] <= t_us - self.policy.window_us:
                self._recent.popleft()
            self.max_window_admits = max(self.max_window_admits, len(self._recent))
        else:
            self.false_rejects += fits

    def sample_bytes(self, n: int) -> None:
        self.bytes_sum += n
        self.bytes_max = max(self.bytes_max, n)

    def pct(self, n: int) -> float:
        return 100.0 * n / self.offered if self.offered else float("nan")


def replay(design: str, schedule: Sequence[tuple[int, str]], policy: Policy = POLICY,
           history: History | None = None) -> dict[str, Tally]:
    """Decide `schedule` ((µs since EPOCH_US, tenant), sorted) in order, one limiter per tenant."""
    core = ALGORITHMS[design]
    states: dict[str, Any] = {}
    tallies: dict[str, Tally] = {}
    for t, tenant in schedule:
        now = EPOCH_US + t
        d = core(states.get(tenant), now, policy, 1)
        states[tenant] = d.state
        tally = tallies.get(tenant)
        if tally is None:
            tally = tallies[tenant] = Tally(policy)
        tally.record(now, d.allowed)
        tally.sample_bytes(state_bytes(design, d.state))
        if history is not None:
            op = history.invoke(F_DECIDE, decision_value(tenant=tenant, time_us=now, allowed=d.allowed,
                                                         policy=policy, algorithm=design), time_us=now)
            history.complete(op, "ok", time_us=now)
    return tallies


def exact_admitted(schedule: Sequence[tuple[int, str]], policy: Policy = POLICY) -> int:
    """How many of `schedule` an exact sliding window would admit (one limiter per tenant)."""
    exact: dict[str, ExactWindow] = {}
    n = 0
    for t, tenant in schedule:
        window = exact.get(tenant) or exact.setdefault(tenant, ExactWindow(policy))
        if window.fits(t):
            window.admit(t)
            n += 1
    return n


# ---------------------------------------------------------------------------------------------
# App servers sharing one Redis


class Cluster:
    """App servers deciding with their own clocks against one shared Redis, over a network.

    Redis is a dict of limiter states; a command takes effect when it reaches Redis (SimPy runs
    simultaneous events one by one, as Redis runs commands). Strict designs send one atomic script
    carrying the app server's clock as it was when sent; `naive` reads the state, decides on the
    app server when the reply is back and writes the new state in a second round trip: the
    lost-update race.
    """

    def __init__(self, env: simpy.Environment, design: str, policy: Policy, rng: np.random.Generator, *,
                 offsets_us: Sequence[int] = (0,), history: History | None = None) -> None:
        self.env = env
        self.design = design
        self.policy = policy
        self.offsets_us = tuple(offsets_us)
        self.history = history
        self.redis: dict[str, Any] = {}
        self.tallies: dict[str, Tally] = {}
        self._core = ALGORITHMS[design]
        self._rng = rng

    def _hop(self) -> simpy.Timeout:
        return self.env.timeout(NET_BASE_US + round(self._rng.exponential(NET_JITTER_MEAN_US)))

    def request(self, tenant: str, server: int) -> simpy.Process:
        return self.env.process(self._naive(tenant, server) if self.design == "naive" else
                                self._atomic(tenant, server))

    def _clock(self, server: int) -> int:
        return EPOCH_US + self.env.now + self.offsets_us[server]

    def _atomic(self, tenant: str, server: int) -> Generator[simpy.Event, Any, None]:
        now = self._clock(server)
        yield self._hop()
        d = self._core(self.redis.get(tenant), now, self.policy, 1)
        self.redis[tenant] = d.state
        self._record(tenant, now, d.allowed)
        yield self._hop()

    def _naive(self, tenant: str, server: int) -> Generator[simpy.Event, Any, None]:
        yield self._hop()
        read = self.redis.get(tenant)
        yield self._hop()
        now = self._clock(server)
        d = fixed_window(read, now, self.policy, 1)
        self._record(tenant, now, d.allowed)
        yield self._hop()
        self.redis[tenant] = d.state
        yield self._hop()

    def _record(self, tenant: str, now: int, allowed: bool) -> None:
        tally = self.tallies.get(tenant)
        if tally is None:
            tally = self.tallies[tenant] = Tally(self.policy)
        tally.record(EPOCH_US + self.env.now, allowed)
        if self.history is not None:
            op = self.history.invoke(F_DECIDE, decision_value(tenant=tenant, time_us=now, allowed=allowed,
                                                              policy=self.policy, algorithm=self.design),
                                     time_us=now)
            self.history.complete(op, "ok", time_us=now)


def run_cluster(design: str, schedule: Sequence[tuple[int, str]], seed: int, *, policy: Policy = POLICY,
                offsets_us: Sequence[int] = (0,), history: History | None = None) -> dict[str, Tally]:
    """Send `schedule` through a cluster of len(offsets_us) app servers, each request to a random one."""
    env = simpy.Environment()
    rng = np.random.default_rng([seed, 0x5CE3])
    cluster = Cluster(env, design, policy, rng, offsets_us=offsets_us, history=history)
    servers = rng.integers(0, len(offsets_us), size=len(schedule))

    def drive() -> Generator[simpy.Event, Any, None]:
        for (t, tenant), server in zip(schedule, servers, strict=True):
            if t > env.now:
                yield env.timeout(t - env.now)
            cluster.request(tenant, int(server))

    env.process(drive())
    env.run()
    return cluster.tallies


# ---------------------------------------------------------------------------------------------
# Experiments


def boundary_burst(design: str, load_point: float, seed: int, policy: Policy = POLICY) -> int:
    """Admitted out of `load_point` x `requests` sent evenly around a window boundary by an idle tenant."""
    n = max(1, round(load_point * policy.requests))
    half = round(BOUNDARY_SPREAD * policy.window_us)
    # A seeded phase, so the seeds do not all put a request exactly on the boundary.
    phase = int(np.random.default_rng([seed, 0xB0]).integers(0, max(1, 2 * half // n)))
    boundary = 5 * policy.window_us
    schedule = [(boundary - half + phase + i * 2 * half // n, HEAVY) for i in range(n)]
    return replay(design, schedule, policy)[HEAVY].admitted


def race_history(design: str, load_point: float, seed: int) -> History:
    """`load_point` x 50 requests within 2 ms across the app servers at 50 per 10 s: the decisions."""
    n = max(1, round(load_point * RACE_POLICY.requests))
    rng = np.random.default_rng([seed, 0x2ACE])
    start = RACE_POLICY.window_us + US_PER_S  # one second into a window: no boundary in reach
    schedule = sorted((start + int(t), "racer") for t in rng.integers(0, RACE_SPREAD_US, size=n))
    history = History(process="sim")
    run_cluster(design, schedule, seed, policy=RACE_POLICY, offsets_us=(0,) * SERVERS, history=history)
    return history


def simulate_one(design: str, load_point: float, seed: int, *, quick: bool = False,
                 run_id: str | None = None) -> list[Row]:
    """Every experiment of the module docstring for one design, load point and seed, as rows."""
    durations = QUICK_DURATIONS_S if quick else DURATIONS_S
    key = RunKey(run_id=run_id or new_run_id(PATTERN, "sim"), pattern=PATTERN, design=design, seed=seed,
                 load_point=load_point)
    rows: list[Row] = []

    heavy = arrivals(heavy_tenant(load_point, duration_s=durations["accuracy"]), seed)
    acc = replay(design, heavy).get(HEAVY, Tally(POLICY))
    exact = exact_admitted(heavy)
    rows += [
        key.row(ALL_TENANTS, "accuracy_offered", acc.offered, "requests"),
        key.row(ALL_TENANTS, "accuracy_admitted", acc.admitted, "requests"),
        key.row(ALL_TENANTS, "accuracy_admitted_vs_exact_pct",
                100.0 * acc.admitted / exact if exact else float("nan"), "percent"),
        key.row(ALL_TENANTS, "accuracy_rejected_pct", acc.pct(acc.offered - acc.admitted), "percent"),
        key.row(ALL_TENANTS, "accuracy_false_admit_pct", acc.pct(acc.false_admits), "percent"),
        key.row(ALL_TENANTS, "accuracy_false_reject_pct", acc.pct(acc.false_rejects), "percent"),
        key.row(ALL_TENANTS, "accuracy_max_window_ratio", acc.max_window_admits / POLICY.requests, "x_limit"),
        key.row(ALL_TENANTS, "memory_state_bytes_mean", acc.bytes_sum / max(1, acc.offered), "bytes"),
        key.row(ALL_TENANTS, "memory_state_bytes_max", acc.bytes_max, "bytes"),
        key.row(ALL_TENANTS, "boundary_burst_ratio", boundary_burst(design, load_point, seed) / POLICY.requests,
                "x_limit"),
    ]

    nn_workload = noisy_neighbour(load_point, duration_s=durations["neighbour"], policy=NEIGHBOUR_POLICY)
    nn = replay(design, arrivals(nn_workload, seed), NEIGHBOUR_POLICY)
    quota = NEIGHBOUR_POLICY.requests * durations["neighbour"] / NEIGHBOUR_POLICY.window_s
    for tenant in (NOISY, *QUIET):
        t = nn.get(tenant, Tally(NEIGHBOUR_POLICY))
        rows += [key.row(tenant, "neighbour_rejected_pct", t.pct(t.offered - t.admitted), "percent"),
                 key.row(tenant, "neighbour_admitted_x_quota", t.admitted / quota, "x_limit")]
    quiet_offered = sum(nn[q].offered for q in QUIET if q in nn)
    quiet_rejected = sum(nn[q].offered - nn[q].admitted for q in QUIET if q in nn)
    noisy = nn.get(NOISY, Tally(NEIGHBOUR_POLICY))
    rows += [
        key.row(ALL_TENANTS, "neighbour_noisy_rejected_pct", noisy.pct(noisy.offered - noisy.admitted), "percent"),
        key.row(ALL_TENANTS, "neighbour_quiet_rejected_pct",
                100.0 * quiet_rejected / quiet_offered if quiet_offered else float("nan"), "percent"),
        key.row(ALL_TENANTS, "neighbour_noisy_admitted_x_quota", noisy.admitted / quota, "x_limit"),
    ]

    skew_schedule = [a for a in heavy if a[0] < durations["skew"] * US_PER_S]
    skew_us = SKEW_MS * 1000
    for name, offsets in (("cluster", (0,) * SERVERS), ("skew", (-skew_us, 0, skew_us))):
        c = run_cluster(design, skew_schedule, seed, offsets_us=offsets).get(HEAVY, Tally(POLICY))
        rows += [
            key.row(ALL_TENANTS, f"{name}_false_admit_pct", c.pct(c.false_admits), "percent"),
            key.row(ALL_TENANTS, f"{name}_false_reject_pct", c.pct(c.false_rejects), "percent"),
            key.row(ALL_TENANTS, f"{name}_max_window_ratio", c.max_window_admits / POLICY.requests, "x_limit"),
        ]

    race = race_history(design, load_point, seed)
    admitted = sum(1 for op in race.ops if op.type == "ok" and op.value["allowed"])
    rows += [
        key.row(ALL_TENANTS, "race_admitted", admitted, "requests"),
        key.row(ALL_TENANTS, "race_admitted_ratio", admitted / RACE_POLICY.requests, "x_limit"),
        key.row(ALL_TENANTS, "race_no_over_admission", float(no_over_admission(race.ops).valid), "bool"),
    ]
    return rows


def _simulate(design: str, load_point: float, seed: int, params: Mapping[str, Any]) -> list[Row]:
    if design in SHED_DESIGNS:
        return simulate_shedding(design, load_point, seed, quick=params["quick"], run_id=params["run_id"],
                                 pattern=PATTERN)
    return simulate_one(design, load_point, seed, quick=params["quick"], run_id=params["run_id"])


def run(out: Path, *, quick: bool = False, seeds: int = 5, jobs: int = 2,
        progress: Callable[[int, int], None] | None = None) -> Path:
    """Sweep DESIGNS x LOAD_POINTS x seeds; write `out/sim/results.csv` and run.json; return the CSV.

    `quick` shortens the workloads (QUICK_DURATIONS_S); designs, load points and seeds are unchanged.
    """
    run_id = new_run_id(PATTERN, "sim")
    rows = sweep(_simulate, designs=(*DESIGNS, *SHED_DESIGNS), load_points=LOAD_POINTS, seeds=range(seeds),
                 params={"run_id": run_id, "quick": quick}, jobs=jobs, progress=progress)
    parameters = {
        "policy": {"requests": POLICY.requests, "window_s": POLICY.window_s},
        "neighbour_policy": {"requests": NEIGHBOUR_POLICY.requests, "window_s": NEIGHBOUR_POLICY.window_s},
        "race_policy": {"requests": RACE_POLICY.requests, "window_s": RACE_POLICY.window_s},
        "durations_s": QUICK_DURATIONS_S if quick else DURATIONS_S,
        "tenants": {"accuracy": [HEAVY], "neighbour": [NOISY, *QUIET]},
        "quiet_multiple": QUIET_MULTIPLE,
        "boundary_spread": BOUNDARY_SPREAD,
        "servers": SERVERS,
        "skew_ms": SKEW_MS,
        "network_hop_us": {"base": NET_BASE_US, "jitter_mean": NET_JITTER_MEAN_US},
        "race_spread_us": RACE_SPREAD_US,
        "designs": list(DESIGNS),
        "load_points": list(LOAD_POINTS),
        "seeds": list(range(seeds)),
        "quick": quick,
        "jobs": jobs,
        "shedding": shedding_parameters(quick),
    }
    return write_run(out / "sim", run_id=run_id, pattern=PATTERN, source="sim", rows=rows, parameters=parameters)
