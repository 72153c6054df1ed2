"""One source's rows indexed by cell, (design, load point, tenant, metric) -> {seed: value}: the
index every pattern report reads its numbers from."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Self

from saaslab.report.data import RunData
from saaslab.report.numbers import MISSING, Summary, load_key, ordered
from saaslab.results import ALL_TENANTS, Row

CellKey = tuple[str, float, str, str]


@dataclass
class Cells:
    """A run's rows by cell; `designs` in the pattern's registry order, `load_points` ascending."""

    run: RunData
    values: dict[CellKey, dict[int, float]]
    designs: list[str]
    load_points: list[float]

    @classmethod
    def from_run(cls, run: RunData, order: Sequence[str], *, keep: Callable[[Row], bool] = lambda r: True,
                 metric: Callable[[str], str] = lambda m: m) -> Self:
        """The rows `keep` accepts, each metric renamed by `metric`."""
        values: dict[CellKey, dict[int, float]] = defaultdict(dict)
        for r in run.rows:
            if keep(r):
                values[(r.design, load_key(r.load_point), r.tenant, metric(r.metric))][r.seed] = r.value
        return cls(run=run, values=dict(values), designs=ordered((k[0] for k in values), order),
                   load_points=sorted({k[1] for k in values}))

    def seeds(self, design: str, lp: float, metric: str, tenant: str = ALL_TENANTS) -> dict[int, float]:
        return self.values.get((design, load_key(lp), tenant, metric), {})

    def get(self, design: str, lp: float, metric: str, tenant: str = ALL_TENANTS) -> Summary:
        found = self.seeds(design, lp, metric, tenant)
        return Summary.of(found.values()) if found else MISSING

    def has(self, design: str, lp: float) -> bool:
        return any(k[0] == design and k[1] == load_key(lp) for k in self.values)

    def has_metric(self, metric: str) -> bool:
        return any(k[3] == metric for k in self.values)

    @property
    def max_seeds(self) -> int:
        return max((len(v) for v in self.values.values()), default=0)
