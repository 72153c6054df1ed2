"""The sharding simulation's parameters: designs, scales, the model's knobs (`Setup`), the tenant population
(Zipf sizes and request rates) and how a metric's name carries the cell it was measured in (the package
docstring says what each knob does)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import numpy as np

from reference_impl.sharding.core import DEFAULT_VNODES, MovePolicy
from saaslab.patterns.sharding import MOVER, ROUTER, ShardingSettings

PATTERN = "sharding"
ROUTERS = tuple(d.name for d in ROUTER.designs)
"""mod, ring, jump, rendezvous, directory: as `SAASLAB_SHARD_ROUTER` spells them."""
MOVERS = tuple(d.name for d in MOVER.designs)
"""fenced, unsafe: as `SAASLAB_SHARD_MOVER` spells them."""
UNSAFE = next(d.name for d in MOVER.designs if d.unsafe)
DESIGNS = ROUTERS + MOVERS
ZIPF_EXPONENTS = (0.7, 1.0, 1.2)
PLACEMENT = 0.0
"""The `load_point` of every row that does not depend on offered load (placement, growth, spread, memory,
moves); the queueing rows carry their shards' mean utilisation instead."""
MEMORY_TENANTS = 1_000_000
"""Router memory is reported for this many tenants."""

_SETTINGS = ShardingSettings()
"""The service's defaults (saaslab/patterns/sharding.py): ring points, pool size and fence backlog as it runs them."""


@dataclass(frozen=True)
class Scale:
    """How big the sweep is: the full run or `--quick`'s small subset."""

    tenants: tuple[int, ...]
    """Population sizes of the balance experiment (each seed's smaller populations are prefixes of its largest)."""
    shards: tuple[int, ...]
    growth_tenants: int
    """Tenants whose placement is compared before and after a shard is added (N -> N+1 for each N in `shards`)."""
    spread_tenants: int
    spread_shards: int
    """The ring-spread check: equal tenants on a ring of `spread_shards` shards, for each of `Setup.spread_vnodes`."""
    memory_tenants: int
    """Tenants the directory holds while its memory is measured (scaled to `MEMORY_TENANTS` when fewer)."""
    queue_tenants: int
    queue_shards: int
    queue_loads: tuple[float, ...]
    queue_duration_s: float
    move_rows: tuple[int, ...]
    write_rates: tuple[float, ...]


FULL = Scale(tenants=(10_000, 100_000, 1_000_000), shards=(4, 16, 64), growth_tenants=100_000,
             spread_tenants=1_000_000, spread_shards=64, memory_tenants=1_000_000, queue_tenants=100_000,
             queue_shards=16, queue_loads=(0.5, 0.8), queue_duration_s=2.0, move_rows=(10_000, 100_000, 1_000_000),
             write_rates=(10.0, 100.0, 1000.0, 5000.0))
QUICK = Scale(tenants=(10_000,), shards=(4, 16), growth_tenants=10_000, spread_tenants=100_000,
              spread_shards=16, memory_tenants=10_000, queue_tenants=10_000, queue_shards=16, queue_loads=(0.8,),
              queue_duration_s=0.3, move_rows=(10_000, 100_000), write_rates=(100.0, 1000.0))


@dataclass(frozen=True)
class Setup:
    """Every knob of the model besides the scale, the design and the seed."""

    vnodes: int = _SETTINGS.shard_vnodes
    """Ring points per shard of the `ring` router in the balance, growth and queueing experiments."""
    spread_vnodes: tuple[int, ...] = (DEFAULT_VNODES, 1_000)
    mean_rows: int = 1_000
    """A tenant's rows on average: a tenant of Zipf rank r holds rows in proportion to r^-s, as it sends requests."""
    rebalance_tolerance: float = 1.10
    rebalance_max_tenants: int = 100_000
    """The directory is rebalanced by load (`rebalance_plan`) up to this many tenants; above it the planner's
    O(tenants) scan per move makes a run too long, and the directory's rows are left out."""
    shard_slots: int = _SETTINGS.shard_pool_max
    """Connections per shard: requests beyond them queue (FIFO)."""
    service_ms: float = 5.0
    service_jitter_ms: float = 5.0
    """A request holds a connection `service_ms` + exponential jitter of this mean."""
    rtt_ms: float = 0.5
    """A round trip to a shard or the control database."""
    write_ms: float = 1.0
    """A write's statement time on a shard (plus `rtt_ms`)."""
    copy_batch_rows: int = 10_000
    copy_row_us: float = 10.0
    """The copy reads and writes rows in batches: a round trip per batch plus this per row (100,000 rows/s)."""
    apply_us: float = 50.0
    """A catch-up round applies one captured change in this long (20,000 changes/s) plus a round trip."""
    delete_row_us: float = 2.0
    """Cleaning the source deletes the tenant's rows at this cost per row (after the flip: blocks nothing)."""
    fence_backlog: int = _SETTINGS.shard_fence_backlog
    max_rounds: int = MovePolicy().max_rounds
    writers: int = 8
    """Service workers writing to the moving tenant, each with its own routing cache."""
    retry_ms: float = 2.0
    """A write or read refused at the fence is retried this long later against a fresh placement."""
    request_timeout_ms: float = 5_000.0
    """A write still refused after this long fails (the client is told, nothing was written)."""
    cache_ttl_ms: float = 1_000.0
    """A worker re-reads a cached placement this long after it read it. The fenced mover never relies on it (a
    refusal invalidates at once); under the unsafe mover it is how long a stale worker keeps writing to the source."""
    read_rate: float = 50.0
    """Reads per second of the moving tenant's latest acknowledged write (read-your-writes across the move)."""
    warmup_ms: float = 50.0
    settle_ms: float = 300.0
    """Writes start `warmup_ms` before the move and go on `settle_ms` after it is done."""

    def policy(self) -> MovePolicy:
        return MovePolicy(fence_backlog=self.fence_backlog, max_rounds=self.max_rounds)

    def shard_capacity_rps(self) -> float:
        return self.shard_slots * 1000.0 / (self.service_ms + self.service_jitter_ms)

    def parameters(self) -> dict[str, Any]:
        return {**asdict(self), "shard_capacity_rps": self.shard_capacity_rps()}


SETUP = Setup()


# ---------------------------------------------------------------------------------------------
# The population

def tenant_ids(seed: int, n: int) -> list[str]:
    """The seed's first `n` tenants: ids a service might hand out, hashed to places by the routers."""
    return [f"s{seed}-t{k:07d}" for k in range(n)]


def shard_ids(seed: int, n: int) -> tuple[int, ...]:
    """The seed's shards: each seed names its shards apart, so rendezvous and the ring get a fresh layout."""
    return tuple(seed * 1_000 + i for i in range(n))


@cache
def _zipf_share(n: int, s: float) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=float) ** -s
    return w / w.sum()


def zipf_loads(seed: int, n: int, s: float) -> np.ndarray:
    """Each of the seed's first `n` tenants' share of the requests (summing to 1): Zipf over ranks, the ranks
    dealt to tenants at random (seeded), so the hottest tenant lands anywhere."""
    rng = np.random.default_rng([seed, n, round(s * 1000)])
    return _zipf_share(n, s)[rng.permutation(n)]


def tenant_rows(loads: np.ndarray, setup: Setup = SETUP) -> np.ndarray:
    """Rows per tenant, in proportion to its requests (a big tenant is a busy one), at least one."""
    return np.maximum(1, np.rint(loads * len(loads) * setup.mean_rows)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# The cell in a metric's name

_CELL = re.compile(r"^(?P<metric>[a-z0-9_]+)@(?P<cell>[a-z_]+=[^,]+(,[a-z_]+=[^,]+)*)$")


def cell_metric(metric: str, **cell: float) -> str:
    """`load_max_over_mean@zipf=1.2,tenants=1000000,shards=64`: the metric and the cell it was measured in."""
    if not cell:
        return metric
    return metric + "@" + ",".join(f"{k}={_number(v)}" for k, v in cell.items())


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def split_metric(metric: str) -> tuple[str, dict[str, float]]:
    """('load_max_over_mean', {'zipf': 1.2, 'tenants': 1e6, 'shards': 64.0}); (metric, {}) without a cell."""
    m = _CELL.match(metric)
    if m is None:
        return metric, {}
    return m["metric"], {k: float(v) for k, v in (part.split("=") for part in m["cell"].split(","))}


def cell_key(cell: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(cell.items()))
