"""Per-shard queueing: how the hottest shard's latency follows from its share of the load.

Each shard is a PostgreSQL server with `Setup.shard_slots` connections, modelled as the kernel's SimPy
`Server` (scenarios/kernel/server.py) under the service's FIFO admission (reference_impl/tenancy/core.py's
`make_scheduler("fifo")`). Requests of all tenants arrive as one Poisson stream split by placement, so each
shard sees its own Poisson stream at (load point x capacity x shards x its share of the load). The hottest
shard is simulated, and beside it a shard at exactly the mean load, which every scheme would have if it
balanced perfectly. An overloaded shard (utilisation above 1) never catches up: its p99 grows with the run.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import simpy

from reference_impl.tenancy.core import make_scheduler
from saaslab.results import LatencyHistogram
from scenarios.kernel.server import Server, service_time
from scenarios.kernel.workload import TenantSpec, Workload, arrivals
from scenarios.sharding.plan import SETUP, Setup

SHARD = "shard"


def shard_latency(rate_rps: float, duration_s: float, seed: int, setup: Setup = SETUP) -> LatencyHistogram:
    """Latencies (queueing plus service) of the requests that reach one shard at `rate_rps` for `duration_s`,
    every one of them served (an overloaded shard drains its backlog after the arrivals stop)."""
    env = simpy.Environment()
    rng = np.random.default_rng([seed, round(rate_rps * 1000)])
    server = Server(env, lambda: make_scheduler("fifo", setup.shard_slots),
                    service_time(setup.service_ms, setup.service_jitter_ms, rng), name=SHARD)
    schedule = arrivals(Workload((TenantSpec(SHARD, rate=rate_rps),), duration_s=duration_s), seed)
    latency = LatencyHistogram()

    def one() -> Generator[simpy.Event, Any, None]:
        served = yield server.request(SHARD)
        latency.record_us(served.latency_us)

    def arrive() -> Generator[simpy.Event, Any, None]:
        for at_us, _tenant in schedule:
            yield env.timeout(at_us - env.now)
            env.process(one())

    env.process(arrive())
    env.run()
    return latency


def hot_shard(shares: np.ndarray, load_point: float, duration_s: float, seed: int, setup: Setup = SETUP
              ) -> tuple[float, LatencyHistogram]:
    """The hottest shard's utilisation and latencies when the shards' mean utilisation is `load_point`."""
    utilisation = load_point * float(shares.max()) * len(shares)
    return utilisation, shard_latency(utilisation * setup.shard_capacity_rps(), duration_s, seed, setup)


def mean_shard(load_point: float, duration_s: float, seed: int, setup: Setup = SETUP) -> LatencyHistogram:
    """A shard at exactly the mean load: what a perfectly even placement gives every shard."""
    return shard_latency(load_point * setup.shard_capacity_rps(), duration_s, seed, setup)
