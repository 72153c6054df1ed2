"""Tenancy scenario: the noisy neighbour.

Question: when one tenant bursts to 10x its share, which scheduler keeps the other tenants'
latency near what they see alone: pooled FIFO workers, per-tenant bulkheads, or weighted fair
queuing? The modelled server is `SLOTS` workers, each request holding one for about `SERVICE_MS`;
the live service is set up the same way (scheduler slots plus a lab-mode delay at the
`tenancy.query` point), so the simulated and measured runs answer the same question.

The workload description below is shared with `loadtests/tenancy.py`. The simulation replays it
against `scenarios.kernel.server.Server`, which runs the service's own schedulers
(`reference_impl.tenancy.core.make_scheduler`); `run` sweeps designs x load points x seeds and
`simulate_one` runs one point for a notebook.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import simpy

from reference_impl.tenancy.core import PLAN_WEIGHTS, make_scheduler
from saaslab.results import ALL_TENANTS, Row, new_run_id, write_run
from saaslab.stats import jain_index
from scenarios.kernel import US_PER_MS, US_PER_S
from scenarios.kernel.metrics import Metrics, RunKey
from scenarios.kernel.server import Served, Server, service_time
from scenarios.kernel.sweep import sweep
from scenarios.kernel.workload import Burst, TenantSpec, Workload, arrivals

PATTERN = "tenancy"
DESIGNS = ("fifo", "bulkhead", "wfq")

SLOTS = 4
SERVICE_MS = 20.0
CAPACITY_RPS = SLOTS * 1000.0 / SERVICE_MS
BULKHEAD_PER_TENANT = 2
NOISY = "noisy"
QUIET = ("quiet1", "quiet2", "quiet3", "quiet4")
BURST_MULTIPLIER = 10.0
LOAD_POINTS = (0.3, 0.5, 0.7)
"""Offered load before the burst, as a fraction of capacity."""


def noisy_neighbour(load_point: float, *, duration_s: float = 15.0, burst_start_s: float = 5.0,
                    burst_length_s: float = 5.0, burst: bool = True) -> Workload:
    """Five equal tenants at `load_point` of capacity; `noisy` sends 10x its rate during the burst.

    With `burst=False` it is the solo baseline: the same traffic without the burst.
    """
    share = load_point * CAPACITY_RPS / (1 + len(QUIET))
    bursts = (Burst(burst_start_s, burst_length_s, BURST_MULTIPLIER),) if burst else ()
    tenants = (TenantSpec(NOISY, plan="pro", rate=share, bursts=bursts),
               *(TenantSpec(q, plan="pro", rate=share) for q in QUIET))
    return Workload(tenants=tenants, process="poisson", duration_s=duration_s,
                    params={"load_point": load_point, "slots": SLOTS, "service_ms": SERVICE_MS,
                            "burst_multiplier": BURST_MULTIPLIER if burst else 1.0,
                            "burst_start_s": burst_start_s, "burst_length_s": burst_length_s})


# ---------------------------------------------------------------------------------------------
# The simulation: the workload above replayed against the service's own schedulers.

SLO_MS = 500.0
"""A request counts towards goodput only if it completes within this latency."""
OVERHEAD_MS = 1.0
"""Mean of the exponential per-request overhead on top of `SERVICE_MS` (handler jitter)."""
DRAIN_S = 60.0
"""Simulated time after the last arrival for queues to drain; what is still queued then is lost."""
DURATION_S = 15.0


def replay(wl: Workload, design: str, seed: int, *, overhead_ms: float = OVERHEAD_MS,
           drain_s: float = DRAIN_S) -> Metrics:
    """Replay `arrivals(wl, seed)` against a `SLOTS`-worker server scheduled by `design`."""
    env = simpy.Environment()
    weights = {t.name: PLAN_WEIGHTS[t.plan] for t in wl.tenants}
    rng = np.random.default_rng([seed, 0x7E4A])
    server = Server(
        env,
        lambda: make_scheduler(design, SLOTS, per_tenant=BULKHEAD_PER_TENANT, weights=weights),
        service_time(SERVICE_MS, overhead_ms, rng),
        cost_us=round(SERVICE_MS * US_PER_MS),
    )
    metrics = Metrics(slo_us=round(SLO_MS * US_PER_MS), tenants=[t.name for t in wl.tenants])
    env.process(_drive(env, server, metrics, arrivals(wl, seed)))
    env.run(until=round((wl.duration_s + drain_s) * US_PER_S))
    return metrics


def _drive(env: simpy.Environment, server: Server, metrics: Metrics, schedule: list[tuple[int, str]]
           ) -> Generator[simpy.Event, Any, None]:
    def record(proc: simpy.Event) -> None:
        served: Served = proc.value
        if served.ok:
            metrics.complete(served.tenant, served.latency_us)

    for t_us, tenant in schedule:
        if t_us > env.now:
            yield env.timeout(t_us - env.now)
        metrics.offer(tenant)
        server.request(tenant).callbacks.append(record)


def simulate_one(design: str, load_point: float, seed: int, *, duration_s: float = DURATION_S,
                 run_id: str | None = None) -> list[Row]:
    """One design at one load point and seed: the burst run and its solo baseline, as rows.

    Per tenant (from the burst run): latency_p50, latency_p99, offered, completed, goodput.
    Per run (tenant "*"): quiet_p99 and noisy_p99; solo_quiet_p99 (the quiet tenants with no
    burst, same seed); quiet_p99_vs_solo; total goodput; and jain_index.

    `jain_index` is Jain's index over each tenant's *normalised service*: its goodput divided by
    its own offered rate (= the share of its requests served within the SLO, capped at 1, a cap
    that never binds since a tenant cannot complete more than it sent). Raw goodput would rank
    the noisy tenant as favoured merely for asking ten times more. The consequence to keep in
    mind: FIFO degrades everyone alike and scores near 1, while isolating designs push the
    burst's cost onto the noisy tenant alone and score lower. Isolation is read from
    quiet_p99_vs_solo; jain_index says who pays for the burst.
    """
    burst = replay(noisy_neighbour(load_point, duration_s=duration_s), design, seed)
    solo = replay(noisy_neighbour(load_point, duration_s=duration_s, burst=False), design, seed)
    key = RunKey(run_id=run_id or new_run_id(PATTERN, "sim"), pattern=PATTERN, design=design, seed=seed,
                 load_point=load_point)
    quiet_p99 = burst.pooled(QUIET).percentile_ms(99)
    solo_quiet_p99 = solo.pooled(QUIET).percentile_ms(99)
    tenants = (NOISY, *QUIET)
    return [
        *key.tenant_rows(burst, duration_s),
        key.row(ALL_TENANTS, "quiet_p99", quiet_p99, "ms"),
        key.row(ALL_TENANTS, "noisy_p99", burst[NOISY].latency.percentile_ms(99), "ms"),
        key.row(ALL_TENANTS, "solo_quiet_p99", solo_quiet_p99, "ms"),
        key.row(ALL_TENANTS, "quiet_p99_vs_solo", quiet_p99 / solo_quiet_p99, "ratio"),
        key.row(ALL_TENANTS, "jain_index", jain_index([burst[t].normalised_service() for t in tenants]), "ratio"),
        key.row(ALL_TENANTS, "goodput", burst.goodput_rps(tenants, duration_s), "rps"),
    ]


def _simulate(design: str, load_point: float, seed: int, params: Mapping[str, Any]) -> list[Row]:
    return simulate_one(design, load_point, seed, duration_s=params["duration_s"], run_id=params["run_id"])


def run(out: Path, *, quick: bool = False, seeds: int = 5, jobs: int = 2,
        progress: Callable[[int, int], None] | None = None) -> Path:
    """Sweep DESIGNS x LOAD_POINTS x seeds; write `out/sim/results.csv` and run.json; return the CSV.

    The whole sweep takes about 5 s on 2 cores with 5 seeds, so `quick` runs it unchanged (all load
    points, the full 15 s workload); it is recorded in run.json.
    """
    run_id = new_run_id(PATTERN, "sim")
    params = {"run_id": run_id, "duration_s": DURATION_S}
    rows = sweep(_simulate, designs=DESIGNS, load_points=LOAD_POINTS, seeds=range(seeds), params=params,
                 jobs=jobs, progress=progress)
    parameters = {
        "workload": {k: v for k, v in noisy_neighbour(0.0, duration_s=DURATION_S).params.items() if k != "load_point"},
        "tenants": [NOISY, *QUIET],
        "plan_weights": dict(PLAN_WEIGHTS),
        "bulkhead_per_tenant": BULKHEAD_PER_TENANT,
        "overhead_ms": OVERHEAD_MS,
        "slo_ms": SLO_MS,
        "duration_s": DURATION_S,
        "drain_s": DRAIN_S,
        "designs": list(DESIGNS),
        "load_points": list(LOAD_POINTS),
        "seeds": list(range(seeds)),
        "quick": quick,
        "jobs": jobs,
    }
    return write_run(out / "sim", run_id=run_id, pattern=PATTERN, source="sim", rows=rows, parameters=parameters)
