"""Where the routers put tenants: load balance per scheme, data moved when a shard is added, the ring's spread
and router memory, every placement asked of reference_impl/sharding/core.py's own routers and planners."""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reference_impl.sharding.core import (
    DirectoryRouter,
    Move,
    apply_moves,
    expected_moved_fraction,
    make_router,
    rebalance_plan,
)
from scenarios.sharding.plan import (
    MEMORY_TENANTS,
    SETUP,
    ZIPF_EXPONENTS,
    Scale,
    Setup,
    shard_ids,
    tenant_ids,
    tenant_rows,
    zipf_loads,
)

Value = tuple[str, dict[str, float], float, str]
"""(metric, its cell, value, unit): a row before the run's key stamps it."""


def place(router: DirectoryRouter, tenants: Sequence[str]) -> np.ndarray:
    """Each tenant's shard, as the router answers `shard_for`."""
    return np.fromiter((router.shard_for(t) for t in tenants), dtype=np.int64, count=len(tenants))


def per_shard(shards: Sequence[int], where: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Sum of `weights` (default: one per tenant) on each shard, in `sorted(shards)` order, idle shards included."""
    order = np.array(sorted(shards))
    return np.bincount(np.searchsorted(order, where), weights=weights, minlength=len(order)).astype(float)


def max_over_mean(values: np.ndarray) -> float:
    mean = values.mean()
    return float(values.max() / mean) if mean > 0 else 1.0


def cv(values: np.ndarray) -> float:
    """Standard deviation over the mean (population standard deviation across shards)."""
    mean = values.mean()
    return float(values.std() / mean) if mean > 0 else 0.0


def tenant_index(tenant_id: str) -> int:
    """The position of one of `tenant_ids`'s tenants."""
    return int(tenant_id.rsplit("-t", 1)[1])


def apply_to(where: np.ndarray, moves: Sequence[Move]) -> np.ndarray:
    out = where.copy()
    for m in moves:
        out[tenant_index(m.tenant_id)] = m.target
    return out


@dataclass
class Population:
    """One seed's tenants: the first `n` of its ids with Zipf request shares and rows, for one exponent."""

    ids: list[str]
    loads: np.ndarray
    rows: np.ndarray

    @classmethod
    def of(cls, seed: int, n: int, zipf: float, setup: Setup = SETUP) -> Population:
        loads = zipf_loads(seed, n, zipf)
        return cls(tenant_ids(seed, n), loads, tenant_rows(loads, setup))

    def load_map(self) -> dict[str, float]:
        return dict(zip(self.ids, self.loads.tolist(), strict=True))

    def row_map(self) -> dict[str, int]:
        return dict(zip(self.ids, self.rows.tolist(), strict=True))


def rebalanced(router: DirectoryRouter, pop: Population, where: np.ndarray, setup: Setup = SETUP
               ) -> tuple[np.ndarray, list[Move]]:
    """The directory after `rebalance_plan` moved tenants by load: their new places and the moves."""
    moves = rebalance_plan(router, pop.load_map(), rows=pop.row_map(), tolerance=setup.rebalance_tolerance,
                           max_moves=max(100, 4 * len(router.shards)))
    return apply_to(where, moves), moves


class Placements:
    """One scheme's placements for one seed, computed once per shard count over the seed's largest population
    (each smaller population is a prefix of it, and `shard_for` of a tenant does not depend on who else exists)."""

    def __init__(self, scheme: str, seed: int, scale: Scale, setup: Setup = SETUP) -> None:
        self.scheme, self.seed, self.scale, self.setup = scheme, seed, scale, setup
        self.ids = tenant_ids(seed, max(scale.tenants + (scale.growth_tenants, scale.queue_tenants)))
        self._where: dict[int, np.ndarray] = {}
        self._settled: dict[tuple[float, int, int], tuple[Population, np.ndarray, list[Move]]] = {}

    def router(self, shards: int) -> DirectoryRouter:
        return make_router(self.scheme, shard_ids(self.seed, shards), vnodes=self.setup.vnodes)

    def where(self, shards: int, n: int) -> np.ndarray:
        if shards not in self._where:
            self._where[shards] = place(self.router(shards), self.ids)
        return self._where[shards][:n]

    def settled(self, zipf: float, n: int, shards: int) -> tuple[Population, np.ndarray, list[Move]]:
        """The population, where its tenants are, and (directory) the moves `rebalance_plan` made to get there."""
        key = (zipf, n, shards)
        if key not in self._settled:
            pop = Population.of(self.seed, n, zipf, self.setup)
            where, moves = self.where(shards, n), []
            if self.scheme == "directory":
                where, moves = rebalanced(self.router(shards), pop, where, self.setup)
            self._settled[key] = (pop, where, moves)
        return self._settled[key]

    def loads_per_shard(self, zipf: float, n: int, shards: int) -> np.ndarray:
        """Each shard's share of the load (summing to 1), in shard order."""
        pop, where, _moves = self.settled(zipf, n, shards)
        return per_shard(shard_ids(self.seed, shards), where, pop.loads)

    def balance(self) -> list[Value]:
        """Per (tenants, shards): the spread of tenant counts (the hash alone), and per Zipf exponent the spread
        of load, against the floor no placement can beat (the hottest tenant on a shard of its own)."""
        out: list[Value] = []
        for n in self.scale.tenants:
            if self.scheme == "directory" and n > self.setup.rebalance_max_tenants:
                continue
            for k in self.scale.shards:
                counts = per_shard(shard_ids(self.seed, k), self.where(k, n))
                cell = {"tenants": float(n), "shards": float(k)}
                out += [("tenants_max_over_mean", cell, max_over_mean(counts), "ratio"),
                        ("tenants_cv", cell, cv(counts), "ratio")]
                for s in ZIPF_EXPONENTS:
                    load = self.loads_per_shard(s, n, k)
                    pop, _where, moves = self.settled(s, n, k)
                    zcell = {"zipf": s, **cell}
                    out += [("load_max_over_mean", zcell, max_over_mean(load), "ratio"),
                            ("load_cv", zcell, cv(load), "ratio"),
                            ("load_floor", zcell, max(1.0, float(pop.loads.max()) * k), "ratio")]
                    if self.scheme == "directory":
                        moved_rows = sum(m.rows for m in moves)
                        out += [("rebalance_moves", zcell, float(len(moves)), "tenants"),
                                ("rebalance_rows_share", zcell, moved_rows / float(pop.rows.sum()), "ratio")]
        return out

    def growth(self) -> list[Value]:
        """N -> N+1 shards: the tenants (and their rows) whose shard changes, against the theory. The hash
        schemes re-hash (`with_shards`); the directory moves nothing until `rebalance_plan` fills the new shard."""
        out: list[Value] = []
        n = self.scale.growth_tenants
        ids = self.ids[:n]
        for k in self.scale.shards:
            before = self.router(k)
            grown = shard_ids(self.seed, k + 1)
            after = before.with_shards(grown)
            cell = {"tenants": float(n), "shards": float(k)}
            out.append(("moved_theory", cell, expected_moved_fraction(self.scheme, k), "ratio"))
            if self.scheme != "directory":
                moved = self.where(k, n) != place(after, ids)
                out.append(("moved_tenants_share", cell, float(moved.mean()), "ratio"))
            for s in ZIPF_EXPONENTS:
                pop, settled, first = self.settled(s, n, k)
                zcell = {"zipf": s, **cell}
                if self.scheme == "directory":
                    # Balanced by load before the shard came, then the rebalancer fills the new one.
                    where, moves = rebalanced(apply_moves(before, first).with_shards(grown), pop, settled, self.setup)
                    out += [("moved_tenants_share", zcell, len(moves) / n, "ratio"),
                            ("load_max_over_mean_grown", zcell,
                             max_over_mean(per_shard(grown, where, pop.loads)), "ratio")]
                    share = sum(m.rows for m in moves) / float(pop.rows.sum())
                else:
                    share = float(pop.rows[moved].sum() / pop.rows.sum())
                out.append(("moved_rows_share", zcell, share, "ratio"))
        return out

    def ring_spread(self) -> list[Value]:
        """Equal tenants on rings of `spread_vnodes` points per shard: the spread of each shard's share.

        Counting tenants adds binomial noise of (K-1)/M to the squared coefficient of variation (K shards, M
        tenants); `ring_spread` takes it out, `ring_spread_raw` keeps it."""
        out: list[Value] = []
        m, k = self.scale.spread_tenants, self.scale.spread_shards
        ids = tenant_ids(self.seed, m)
        shards = shard_ids(self.seed, k)
        for v in self.setup.spread_vnodes:
            counts = per_shard(shards, place(make_router("ring", shards, vnodes=v), ids))
            raw = cv(counts)
            cell = {"vnodes": float(v), "shards": float(k), "tenants": float(m)}
            out += [("ring_spread", cell, math.sqrt(max(0.0, raw**2 - (k - 1) / m)), "ratio"),
                    ("ring_spread_raw", cell, raw, "ratio"),
                    ("ring_min_over_mean", cell, float(counts.min() / counts.mean()), "ratio"),
                    ("ring_max_over_mean", cell, max_over_mean(counts), "ratio")]
        return out

    def memory(self) -> list[Value]:
        """What the router holds for `MEMORY_TENANTS` tenants on the largest shard count, measured with
        tracemalloc (Python allocations the router keeps). A hash scheme keeps its shards (the ring its points);
        the directory an entry per tenant placed, tenant id strings included: measured with
        `scale.memory_tenants` entries and scaled linearly when that is fewer."""
        k = max(self.scale.shards)
        shards = shard_ids(self.seed, k)
        cell = {"tenants": float(MEMORY_TENANTS), "shards": float(k)}
        if self.scheme != "directory":
            tracemalloc.start()
            try:
                router = make_router(self.scheme, shards, vnodes=self.setup.vnodes)
                held = tracemalloc.get_traced_memory()[0]
            finally:
                tracemalloc.stop()
            del router
            return [("router_bytes", cell, float(held), "bytes")]
        n = self.scale.memory_tenants
        router = make_router("directory", shards)
        where = place(router, tenant_ids(self.seed, n)).tolist()
        tracemalloc.start()
        try:
            targets = dict(zip(tenant_ids(self.seed, n), where, strict=True))
            placed = router.with_placements(targets)
            del targets
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        del placed
        return [("router_bytes", cell, held * MEMORY_TENANTS / n, "bytes"),
                ("router_bytes_per_tenant", cell, held / n, "bytes")]

