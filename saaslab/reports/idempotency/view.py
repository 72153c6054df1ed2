"""The idempotency report's view of one source (its run-level rows by cell) and numbers as words."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from saaslab import patterns
from saaslab.report import Cells, RunData, Summary, fmt_num, ordered
from saaslab.results import ALL_TENANTS

PATTERN = "idempotency"
DESIGN_ORDER = tuple(d.name for d in patterns.get(PATTERN).designs)
UNSAFE = next(d.name for d in patterns.get(PATTERN).designs if d.unsafe)
"""The deliberately unsafe design: the one the checker must be seen to catch."""
CHECKS = ("exactly_one_effect", "replays_match_first", "no_orphan_charges")
AGREEMENT_PCT = 25.0
"""A measured rate within this many percent of the simulated mean (or inside its 95% CI) agrees."""
NO_LIVE = "no live run yet"
AS_LIVE = "aslive_"
"""Prefix of the simulation's rows replaying the live plan (scenarios.idempotency.as_live, `LIVE_PLAN`)."""
OWN_WORKLOAD = " *"
"""Marks a simulated cell of the table taken from the simulation's own workload: it has no replay of the live
plan at that load point."""
BRACKETED = re.compile(r"^(?P<check>[^\[\]]+)\[(?P<design>[^\[\]]+)\]$")


def order(designs: Iterable[str]) -> list[str]:
    return ordered(designs, DESIGN_ORDER)


def per_10k(s: Summary) -> str:
    return f"{fmt_num(s.mean)} per 10,000"


@dataclass
class View(Cells):
    """One source's run-level rows by cell, with the idempotency report's readings of them."""

    @classmethod
    def of(cls, run: RunData, prefix: str = "") -> View:
        """The rows whose metric starts with `prefix`, under the rest of the name; without a prefix, the rows
        of the simulation's own experiment (not its replay of the live plan, `aslive_*`)."""
        def keep(r) -> bool:  # type: ignore[no-untyped-def]
            if r.tenant != ALL_TENANTS:
                return False
            return r.metric.startswith(prefix) if prefix else not r.metric.startswith(AS_LIVE)

        return cls.from_run(run, DESIGN_ORDER, keep=keep, metric=lambda m: m.removeprefix(prefix))

    def runs(self, design: str, metric: str) -> list[tuple[float, float]]:
        """(load point, value) of every run of `design` that has `metric`."""
        return [(lp, v) for lp in self.load_points for v in self.seeds(design, lp, metric).values()]

    def held(self, design: str, check: str) -> tuple[int, int]:
        """(runs where the check held, runs that recorded it)."""
        runs = self.runs(design, check)
        return sum(1 for _, v in runs if v >= 0.5), len(runs)

    @property
    def overload(self) -> list[float]:
        return [lp for lp in self.load_points if lp > 1.0]

    @property
    def within_capacity(self) -> list[float]:
        return [lp for lp in self.load_points if lp <= 1.0]

    @property
    def reference_load(self) -> float:
        """The load the cost comparison quotes: the highest within capacity (else the lowest)."""
        return (self.within_capacity or self.load_points)[-1]


def zero_everywhere(v: View, design: str, metric: str) -> bool | None:
    """True if every run of `design` recorded 0 for `metric`; None if none recorded it."""
    runs = v.runs(design, metric)
    return None if not runs else all(x == 0 for _, x in runs)


def worst(v: View, design: str, metric: str) -> tuple[float, float] | None:
    """(highest mean over seeds, its load point) of `metric` for `design`."""
    found = [(s.mean, lp) for lp in v.load_points if (s := v.get(design, lp, metric)).known]
    return max(found) if found else None
