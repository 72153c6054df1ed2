"""The tenancy report's view of one source: its rows summarised over seeds, and numbers as words."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from saaslab import patterns
from saaslab.report import MISSING, RunData, Summary, decimals_for, fmt_num, load_key, ordered, summarise
from saaslab.results import ALL_TENANTS

DESIGN_ORDER = tuple(d.name for d in patterns.get("tenancy").designs)
NOISY = "noisy"


RESULT_METRICS = (
    ("quiet_p99_vs_solo", "quiet p99 / solo"),
    ("quiet_p99", "quiet p99 (ms)"),
    ("noisy_p99", "noisy p99 (ms)"),
    ("jain_index", "Jain index"),
    ("goodput", "goodput (rps)"),
)
COMPARED_METRICS = (("quiet_p99_vs_solo", "quiet p99 / solo"), ("quiet_p99", "quiet p99 (ms)"),
                    ("jain_index", "Jain index"))
LABELS = dict(RESULT_METRICS)

NEAR_SOLO = 1.5
"""A quiet tenant whose p99 is within this factor of its solo p99 counts as kept 'near' solo."""
AGREEMENT_PCT = 25.0
"""Simulated and measured values within this many percent of each other count as agreeing."""


@dataclass
class View:
    """One source's rows summarised over seeds, with the designs and load points it covers."""

    run: RunData
    per_run: dict[tuple[Any, ...], Summary]
    tenant_p99: dict[tuple[Any, ...], Summary]
    seeds: dict[tuple[str, float], int]
    designs: list[str]
    load_points: list[float]

    @classmethod
    def of(cls, run: RunData) -> View:
        per_run = {(d, load_key(lp), m): s for (d, lp, m), s in
                   summarise(run.select(tenant=ALL_TENANTS), by=("design", "load_point", "metric")).items()}
        tenant_p99 = {(d, load_key(lp), t): s for (d, lp, t), s in
                      summarise([r for r in run.select(metric="latency_p99") if r.tenant != ALL_TENANTS],
                                by=("design", "load_point", "tenant")).items()}
        seeds: dict[tuple[str, float], set[int]] = defaultdict(set)
        for r in run.rows:
            seeds[(r.design, load_key(r.load_point))].add(r.seed)
        present = {r.design for r in run.rows}
        designs = ordered(present, DESIGN_ORDER)
        return cls(run=run, per_run=per_run, tenant_p99=tenant_p99, seeds={k: len(v) for k, v in seeds.items()},
                   designs=designs, load_points=sorted({load_key(r.load_point) for r in run.rows}))

    def get(self, design: str, load_point: float, metric: str) -> Summary:
        return self.per_run.get((design, load_key(load_point), metric), MISSING)

    def ranking(self, load_point: float, metric: str = "quiet_p99_vs_solo") -> list[tuple[str, Summary]]:
        """Designs with a known value, lowest mean first."""
        known = [(d, self.get(d, load_point, metric)) for d in self.designs]
        return sorted([(d, s) for d, s in known if s.known], key=lambda ds: ds[1].mean)

    @property
    def max_seeds(self) -> int:
        return max(self.seeds.values(), default=0)

    @property
    def middle_load(self) -> float:
        return self.load_points[len(self.load_points) // 2]


# --- numbers as words ---------------------------------------------------------------------------

def x_words(s: Summary) -> str:
    return f"{fmt_num(s.mean)}x"


def ci_words(s: Summary) -> str:
    """'(95% CI ±0.05, 5 seeds)', or an honest note when there is no interval."""
    if math.isnan(s.ci95):  # a known summary without an interval has exactly one value
        return "(one seed, no CI)"
    return f"(95% CI ±{fmt_num(s.ci95, decimals_for(s.mean))}, {s.n} seeds)"


def ms_words(s: Summary) -> str:
    return f"{fmt_num(s.mean)} ms"
