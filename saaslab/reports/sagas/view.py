"""The sagas report's view of one source: run-level rows by (design, load point, fault condition, metric)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from saaslab import patterns
from saaslab.report import Cells, RunData, Summary, fmt_num, ordered
from saaslab.results import ALL_TENANTS
from scenarios.sagas.plan import CALM, Condition, split_metric

PATTERN = "sagas"
DESIGN_ORDER = tuple(d.name for d in patterns.get(PATTERN).designs)
UNSAFE = next(d.name for d in patterns.get(PATTERN).designs if d.unsafe)
SAFE = tuple(d for d in DESIGN_ORDER if d != UNSAFE)
CHECKS = ("terminal", "all_or_nothing", "stock_conserved", "money_conserved", "no_orphans", "at_most_once",
          "no_prepared_transactions", "unknown_outcomes")
NO_LIVE = "no live run yet"


def order(designs: Iterable[str]) -> list[str]:
    return ordered(designs, DESIGN_ORDER)


def live_condition(run: RunData) -> Condition:
    """The fault condition a live run ran under: its run.json's `failure_rate` and `crash_rate` (default none)."""
    p = run.parameters
    try:
        return Condition(float(p.get("failure_rate") or 0.0), float(p.get("crash_rate") or 0.0))
    except (TypeError, ValueError):
        return CALM


def seconds(s: Summary) -> str:
    return "n/a" if not s.known else f"{fmt_num(s.mean / 1000)} s"


@dataclass
class View(Cells):
    """One source's run-level rows; a metric's key keeps its condition suffix (`latency_p99@fail0/crash0`)."""

    conditions: list[Condition] = field(default_factory=list)

    @classmethod
    def of(cls, run: RunData, default: Condition | None = None) -> View | None:
        """The rows of `run`; a metric without a condition (a live row) is read as `default`'s. None if empty."""
        def named(metric: str) -> str:
            base, condition = split_metric(metric)
            return metric if condition is not None or default is None else default.metric(base)

        view = cls.from_run(run, DESIGN_ORDER, keep=lambda r: r.tenant == ALL_TENANTS, metric=named)
        view.conditions = sorted({c for k in view.values if (c := split_metric(k[3])[1]) is not None})
        return view if view.values and view.conditions else None

    def at(self, design: str, lp: float, metric: str, condition: Condition) -> Summary:
        return self.get(design, lp, condition.metric(metric))

    def runs(self, design: str, metric: str, conditions: Iterable[Condition] | None = None) -> list[float]:
        """Every run's value of `metric` for `design`, over loads and the conditions (default: all)."""
        return [v for c in (self.conditions if conditions is None else conditions) for lp in self.load_points
                for v in self.seeds(design, lp, c.metric(metric)).values() if not math.isnan(v)]

    def held(self, design: str, check: str) -> tuple[int, int]:
        runs = self.runs(design, check)
        return sum(1 for v in runs if v >= 0.5), len(runs)

    @property
    def reference_load(self) -> float:
        """The load the comparisons quote: the middle one swept."""
        return self.load_points[len(self.load_points) // 2]

    @property
    def calm(self) -> Condition:
        """The mildest condition swept (no faults, when it was)."""
        return min(self.conditions)

    @property
    def stormy(self) -> Condition:
        """The harshest: the highest failure rate with the highest crash rate."""
        return max(self.conditions)

    @property
    def crashing(self) -> list[Condition]:
        return [c for c in self.conditions if c.crash > 0]

    @property
    def failing(self) -> Condition | None:
        """The highest failure rate without crashes, if swept."""
        found = [c for c in self.conditions if c.failure > 0 and c.crash == 0]
        return max(found) if found else None
