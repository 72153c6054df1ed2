"""Sharding scenario: as tenants and shards grow and one tenant turns hot, which placement scheme keeps load even,
moves the least data when shards are added, and lets a tenant move between shards online without losing a write
or blocking writes for long?

The twin rule: every placement is asked of reference_impl/sharding/core.py's routers (`make_router`,
`shard_for`, `with_shards`), the directory is rebalanced by its `rebalance_plan`, the theory of growth is its
`expected_moved_fraction`, and a move is its step machine (`start_move`, `advance`) driven against simulated
shards; every move's history and final state go through reference_impl/sharding/invariants.py's `check`, the
checker the live run uses. The model adds tenants, time and latency, nothing else.

The experiments, one task per (design, seed); every knob is a field of `Setup` or `Scale` (plan.py):

* Population (plan.py): a seed's tenants `s<seed>-t<k>`, their request shares Zipf over ranks (exponents
  `ZIPF_EXPONENTS`: 0.7, 1.0, 1.2) with the ranks dealt at random, and rows in proportion (a big tenant is a busy
  one, `mean_rows` on average). A seed names its shards apart too, so rendezvous and the ring get a new layout.
* Balance (placement.py), per router, tenants x shards (`Scale.tenants`, `Scale.shards`) x exponent: the spread of
  tenants and of load across shards, and the floor no scheme can beat (the hottest tenant alone on a shard). The
  directory is the jump fallback rebalanced by load (`rebalance_plan`, tolerance 1.10), up to
  `rebalance_max_tenants` tenants.
* Growth: N -> N+1 shards for each N swept: the share of tenants and rows whose shard changes, against
  `expected_moved_fraction` (N/(N+1) for mod, 1/(N+1) for the others); the directory moves nothing by itself,
  so its row is what `rebalance_plan` moves to fill the new shard (after balancing the N shards first).
* Ring spread: equal tenants on a ring of `spread_shards` shards with 100 and 1,000 points per shard, against
  the published 10% and 3.2% standard deviation (the jump consistent hash paper).
* Router memory for 1,000,000 tenants on the largest shard count, measured with tracemalloc (placement.py says how).
* Queueing (queueing.py): the hottest shard of each scheme as a SimPy server with the shard pool's connections,
  at mean shard utilisation `Scale.queue_loads`, beside a shard at the mean load.
* Moves (mover.py), per mover: one tenant of `Scale.move_rows` rows moved while workers write to it at
  `Scale.write_rates` writes/s; the write-blocked window, the move's duration and the checker's verdicts.

Rows (tenant "*"), each metric named with its cell: `<metric>@<key>=<value>,...` (`plan.cell_metric`,
`plan.split_metric`); `load_point` is the queueing experiment's mean shard utilisation, `PLACEMENT` (0) elsewhere.

- design in ROUTERS, cell `zipf, tenants, shards`: `load_max_over_mean`, `load_cv` (ratio: the hottest shard's load
  over the mean; the standard deviation over the mean), `load_floor` (ratio: the hottest tenant's load over the
  mean shard load, at least 1); directory only: `rebalance_moves` (tenants), `rebalance_rows_share` (ratio of rows)
- ROUTERS, cell `tenants, shards`: `tenants_max_over_mean`, `tenants_cv` (ratio: tenant counts, the hash alone)
- ROUTERS, growth cell `tenants, shards` (N before): `moved_theory` (ratio), `moved_tenants_share` (ratio; the
  directory's cell adds `zipf`); cell `zipf, tenants, shards`: `moved_rows_share` (ratio); directory:
  `load_max_over_mean_grown` (ratio, after the rebalancer filled the new shard)
- ring, cell `vnodes, shards, tenants`: `ring_spread` (ratio, counting noise taken out), `ring_spread_raw`,
  `ring_min_over_mean`, `ring_max_over_mean` (ratio)
- ROUTERS, cell `tenants, shards`, seed 0 only: `router_bytes` (bytes); directory: `router_bytes_per_tenant`
- ROUTERS at load point u, cell `zipf, tenants, shards`: `hot_shard_utilisation` (ratio), `hot_shard_p50`,
  `hot_shard_p99` (ms); cell `shards`: `mean_shard_p99` (ms, a shard at the mean load)
- design in MOVERS, cell `rows, wps`: `move_duration_ms`, `copy_ms`, `write_blocked_ms` (fence to flip),
  `write_latency_p50`, `write_latency_p99`, `write_latency_max` (ms, every acknowledged write of the run);
  `catch_up_rounds` (rounds); `moved_rows` (rows on the target when the directory flipped); `writes`,
  `acknowledged_writes`, `failed_writes`, `lost_writes` (acknowledged, then on no shard) (writes);
  `writes_refused` (requests refused at the fence); `misplaced_rows` (rows); `stale_reads` (reads that missed an
  acknowledged write); `acknowledged_writes_once`, `single_owner`, `read_your_writes`, `directory_agrees`,
  `rows_conserved`: 1 if the check held (bool); `checks_valid`: all of them

`run` sweeps every design x seeds (`FULL`, or `QUICK` with `--quick`: fewer and smaller cells, the same seeds);
95% confidence intervals come from the seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from saaslab.results import ALL_TENANTS, Row, new_run_id, write_run
from scenarios.kernel.metrics import RunKey
from scenarios.kernel.sweep import sweep
from scenarios.sharding import queueing
from scenarios.sharding.mover import MoveResult, simulate_move
from scenarios.sharding.placement import Placements, Value
from scenarios.sharding.plan import (
    DESIGNS,
    FULL,
    MOVERS,
    PATTERN,
    PLACEMENT,
    QUICK,
    ROUTERS,
    SETUP,
    UNSAFE,
    ZIPF_EXPONENTS,
    Scale,
    Setup,
    cell_metric,
    split_metric,
)

__all__ = [
    "DESIGNS", "FULL", "MOVERS", "PATTERN", "PLACEMENT", "QUICK", "ROUTERS", "SETUP", "UNSAFE", "ZIPF_EXPONENTS",
    "MoveResult", "Placements", "Scale", "Setup", "cell_metric", "run", "simulate", "simulate_move", "split_metric",
]


def _router_values(scheme: str, seed: int, scale: Scale, setup: Setup) -> list[tuple[float, Value]]:
    p = Placements(scheme, seed, scale, setup)
    out: list[tuple[float, Value]] = [(PLACEMENT, v) for v in (*p.balance(), *p.growth())]
    if scheme == "ring":
        out += [(PLACEMENT, v) for v in p.ring_spread()]
    if seed == 0:
        out += [(PLACEMENT, v) for v in p.memory()]
    n, k = scale.queue_tenants, scale.queue_shards
    if scheme != "directory" or n <= setup.rebalance_max_tenants:
        for s in ZIPF_EXPONENTS:
            shares = p.loads_per_shard(s, n, k)
            cell = {"zipf": s, "tenants": float(n), "shards": float(k)}
            for lp in scale.queue_loads:
                utilisation, hot = queueing.hot_shard(shares, lp, scale.queue_duration_s, seed, setup)
                out += [(lp, ("hot_shard_utilisation", cell, utilisation, "ratio")),
                        (lp, ("hot_shard_p50", cell, hot.percentile_ms(50), "ms")),
                        (lp, ("hot_shard_p99", cell, hot.percentile_ms(99), "ms"))]
    for lp in scale.queue_loads:
        mean = queueing.mean_shard(lp, scale.queue_duration_s, seed, setup)
        out.append((lp, ("mean_shard_p99", {"shards": float(k)}, mean.percentile_ms(99), "ms")))
    return out


def _mover_values(mover: str, seed: int, scale: Scale, setup: Setup) -> list[tuple[float, Value]]:
    out: list[tuple[float, Value]] = []
    for rows in scale.move_rows:
        for wps in scale.write_rates:
            result = simulate_move(mover, rows, wps, seed, setup)
            cell = {"rows": float(rows), "wps": wps}
            out += [(PLACEMENT, (m, cell, v, unit)) for m, v, unit in result.values()]
    return out


def simulate(design: str, seed: int, *, scale: Scale = QUICK, setup: Setup = SETUP, run_id: str | None = None
             ) -> list[Row]:
    """Every row of one design and seed (the module docstring lists them)."""
    if design not in DESIGNS:
        raise ValueError(f"unknown sharding design {design!r}; choose one of {', '.join(DESIGNS)}")
    run_id = run_id or new_run_id(PATTERN, "sim")
    found = (_router_values if design in ROUTERS else _mover_values)(design, seed, scale, setup)
    rows = []
    for lp, (metric, cell, value, unit) in found:
        key = RunKey(run_id=run_id, pattern=PATTERN, design=design, seed=seed, load_point=lp)
        rows.append(key.row(ALL_TENANTS, cell_metric(metric, **cell), value, unit))
    return rows


def _simulate(design: str, _load_point: float, seed: int, params: Mapping[str, Any]) -> list[Row]:
    return simulate(design, seed, scale=params["scale"], setup=params["setup"], run_id=params["run_id"])


def run(out: Path, *, quick: bool = False, seeds: int = 5, jobs: int = 2,
        progress: Callable[[int, int], None] | None = None) -> Path:
    """Sweep DESIGNS x seeds at the full or quick scale; write `out/sim/results.csv` and run.json; return the CSV.

    One task per (design, seed): the sweep's load point is a placeholder (`PLACEMENT`); each task writes the
    queueing rows at their own load points."""
    scale = QUICK if quick else FULL
    run_id = new_run_id(PATTERN, "sim")
    rows = sweep(_simulate, designs=DESIGNS, load_points=(PLACEMENT,), seeds=range(seeds),
                 params={"run_id": run_id, "scale": scale, "setup": SETUP}, jobs=jobs, progress=progress)
    parameters = {
        "setup": SETUP.parameters(),
        "scale": asdict(scale),
        "routers": list(ROUTERS),
        "movers": list(MOVERS),
        "zipf_exponents": list(ZIPF_EXPONENTS),
        "seeds": list(range(seeds)),
        "quick": quick,
        "jobs": jobs,
        "memory": "tracemalloc: Python allocations the router keeps (scenarios/sharding/placement.py)",
    }
    return write_run(out / "sim", run_id=run_id, pattern=PATTERN, source="sim", rows=rows, parameters=parameters)
