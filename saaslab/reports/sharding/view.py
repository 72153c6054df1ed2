"""The sharding report's view of one source: run-level rows by (design, load point, metric with its cell)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from saaslab import patterns
from saaslab.report import MISSING, Cells, RunData, Summary, fmt_num, load_key, ordered
from saaslab.results import ALL_TENANTS
from scenarios.sharding.plan import PLACEMENT, split_metric

PATTERN = "sharding"
DESIGN_ORDER = tuple(d.name for d in patterns.get(PATTERN).designs)
ROUTERS = tuple(d.name for d in patterns.get(PATTERN).axes[0].designs)
MOVERS = tuple(d.name for d in patterns.get(PATTERN).axes[1].designs)
UNSAFE = next(d.name for d in patterns.get(PATTERN).designs if d.unsafe)
HASHED = tuple(r for r in ROUTERS if r != "directory")
CHECKS = ("acknowledged_writes_once", "single_owner", "read_your_writes", "directory_agrees", "rows_conserved")
NO_LIVE = "no live run yet"
PUBLISHED_RING_SPREAD = {100: 0.10, 1000: 0.032}
"""The jump consistent hash paper's standard deviation of load per shard for a ring with that many points."""

Cell = dict[str, float]
CellKey = tuple[tuple[str, float], ...]


def key_of(cell: Mapping[str, float]) -> CellKey:
    return tuple(sorted((k, float(v)) for k, v in cell.items()))


def order(designs: Iterable[str]) -> list[str]:
    return ordered(designs, DESIGN_ORDER)


def pct(s: Summary) -> str:
    """A ratio as a percentage with its CI: '5.9% ± 0.1'."""
    if not s.known:
        return "n/a"
    out = f"{fmt_num(100 * s.mean)}%"
    return out + (f" ± {fmt_num(100 * s.ci95)}" if not math.isnan(s.ci95) else "")


def times(s: Summary) -> str:
    return "n/a" if not s.known else s.text("x")


def big(n: float) -> str:
    """1000000 -> '1,000,000'."""
    return f"{n:,.0f}"


def megabytes(s: Summary) -> str:
    """Bytes as MB, or kB below a megabyte."""
    if not s.known:
        return "n/a"
    return f"{fmt_num(s.mean / 1e6)} MB" if s.mean >= 1e6 else f"{fmt_num(s.mean / 1e3)} kB"


@dataclass
class View(Cells):
    """One source's run-level rows; a metric's key keeps its cell (`load_max_over_mean@zipf=1,...`), and `cell`
    indexes them by (design, load point, metric, cell) whatever order the cell's keys were written in."""

    cell: dict[tuple[str, float, str, CellKey], dict[int, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, run: RunData) -> View | None:
        view = cls.from_run(run, DESIGN_ORDER, keep=lambda r: r.tenant == ALL_TENANTS)
        for (design, lp, _tenant, metric), seeds in view.values.items():
            base, cell = split_metric(metric)
            view.cell[(design, lp, base, key_of(cell))] = seeds
        return view if view.values else None

    def seeds_in(self, design: str, metric: str, lp: float = PLACEMENT, **cell: float) -> dict[int, float]:
        return self.cell.get((design, load_key(lp), metric, key_of(cell)), {})

    def at(self, design: str, metric: str, lp: float = PLACEMENT, **cell: float) -> Summary:
        found = self.seeds_in(design, metric, lp, **cell)
        return Summary.of(found.values()) if found else MISSING

    def cells(self, metric: str, design: str | None = None) -> list[Cell]:
        """Every cell `metric` was measured in (by `design`, when given), in sorted order."""
        found = {k[3] for k in self.cell if k[2] == metric and (design is None or k[0] == design)}
        return [dict(c) for c in sorted(found)]

    def axis(self, metric: str, key: str) -> list[float]:
        """The values one key of `metric`'s cells took, ascending."""
        return sorted({c[key] for c in self.cells(metric) if key in c})

    def designs_with(self, metric: str) -> list[str]:
        return order({k[0] for k in self.cell if k[2] == metric})

    def loads_of(self, metric: str) -> list[float]:
        return sorted({k[1] for k in self.cell if k[2] == metric})

    def runs(self, design: str, metric: str) -> list[float]:
        """Every run's value of `metric` for `design`, over its cells and loads."""
        return [v for k, seeds in self.cell.items() if k[0] == design and k[2] == metric
                for v in seeds.values() if not math.isnan(v)]

    def held(self, design: str, check: str) -> tuple[int, int]:
        runs = self.runs(design, check)
        return sum(1 for v in runs if v >= 0.5), len(runs)

    def nearest(self, design: str, metric: str, cell: Mapping[str, float]) -> Cell | None:
        """The simulated cell of `metric` closest to `cell` (distance in orders of magnitude over shared keys)."""
        found = self.cells(metric, design)
        if not found:
            return None

        def distance(c: Cell) -> float:
            return sum(abs(math.log10(max(c[k], 1e-9)) - math.log10(max(float(v), 1e-9)))
                       for k, v in cell.items() if k in c)

        return min(found, key=lambda c: (distance(c), sorted(c.items())))

    def largest(self, metric: str, key: str) -> float | None:
        values = self.axis(metric, key)
        return values[-1] if values else None

    def middle(self, metric: str, key: str) -> float | None:
        values = self.axis(metric, key)
        return values[len(values) // 2] if values else None


def get_or_missing(view: View | None, design: str, metric: str, lp: float = PLACEMENT, **cell: float) -> Summary:
    return view.at(design, metric, lp, **cell) if view is not None else MISSING
