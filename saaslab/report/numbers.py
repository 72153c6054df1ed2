"""Numbers for reports: summaries over seeds with 95% CIs, and numbers, gaps and lists as words."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from saaslab.results import Row
from saaslab.stats import mean_ci95


@dataclass(frozen=True)
class Summary:
    """Mean over seeds with the half-width of its 95% CI (NaN with fewer than two values)."""

    mean: float
    ci95: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        finite = [v for v in values if not math.isnan(v)]
        mean, half = mean_ci95(finite)
        return cls(mean=mean, ci95=half, n=len(finite))

    @property
    def known(self) -> bool:
        return self.n > 0 and not math.isnan(self.mean)

    @property
    def low(self) -> float:
        return self.mean - self.ci95

    @property
    def high(self) -> float:
        return self.mean + self.ci95

    def text(self, suffix: str = "") -> str:
        """'1.49x ± 0.05' style; 'n/a' when nothing was measured; no ± with a single value."""
        if not self.known:
            return "n/a"
        decimals = decimals_for(self.mean)
        out = f"{fmt_num(self.mean, decimals)}{suffix}"
        if not math.isnan(self.ci95):
            out += f" ± {fmt_num(self.ci95, decimals)}"
        return out


MISSING = Summary(mean=float("nan"), ci95=float("nan"), n=0)
"""A cell nobody measured: reads n/a, is never `known`."""

Key = tuple[Any, ...]


def summarise(rows: Iterable[Row], by: Sequence[str] = ("design", "load_point", "tenant", "metric")
              ) -> dict[Key, Summary]:
    """Group rows by the `by` columns and summarise each group's values (one per seed)."""
    groups: dict[Key, list[float]] = defaultdict(list)
    for r in rows:
        groups[tuple(getattr(r, c) for c in by)].append(r.value)
    return {k: Summary.of(v) for k, v in groups.items()}


def decimals_for(x: float) -> int:
    """Enough decimals for three significant figures below 100, none above."""
    ax = abs(x)
    if math.isnan(ax) or ax >= 100:
        return 0
    if ax >= 10:
        return 1
    if ax >= 0.01 or ax == 0:
        return 2
    return 4


def fmt_num(x: float, decimals: int | None = None) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:,.{decimals_for(x) if decimals is None else decimals}f}"


def gap_percent(reference: float, measured: float) -> float:
    """(measured - reference) / reference in percent; NaN when the reference is zero or unknown."""
    if math.isnan(reference) or math.isnan(measured) or reference == 0:
        return float("nan")
    return (measured - reference) / abs(reference) * 100.0


def fmt_gap(pct: float) -> str:
    if math.isnan(pct):
        return "n/a"
    return f"{round(pct):+d}%"  # an int: no "-0%" for tiny negative gaps


def gap_cell(sim: Summary, live: Summary, *, difference: Callable[[Summary, Summary], str] | None = None,
             when_sim_zero: Callable[[Summary, Summary], str] | None = None) -> str:
    """A simulated-versus-measured gap cell: '+12%', '±0% (both 0)' or 'n/a (sim 0; ...)'.

    `difference`, when given, follows the percentage in brackets (percentage points, say); a zero
    simulation has no relative gap, so `when_sim_zero` (default: `difference`) says what was measured.
    """
    if not (sim.known and live.known):
        return "n/a"
    if sim.mean == 0:
        if live.mean == 0:
            return "±0% (both 0)"
        detail = (when_sim_zero or difference or (lambda _s, m: f"{fmt_num(m.mean)} measured"))(sim, live)
        return f"n/a (sim 0; {detail})"
    gap = fmt_gap(gap_percent(sim.mean, live.mean))
    return f"{gap} ({difference(sim, live)})" if difference else gap


def load_key(x: float) -> float:
    """A load point as a dictionary key: each source (simulation, live run) wrote its own float."""
    return round(x, 6)


def fmt_load(lp: float) -> str:
    return f"{lp:g}"


def fmt_loads(lps: Iterable[float]) -> str:
    """'load 0.5' or 'loads 0.5 and 0.7'."""
    lps = list(lps)
    return ("load " if len(lps) == 1 else "loads ") + fmt_list([fmt_load(lp) for lp in lps])


def fmt_g(x: Any) -> str:
    """A run parameter as written by whoever chose it (20, 0.5), not padded to a precision."""
    return f"{float(x):g}"


def ordered(present: Iterable[str], order: Sequence[str]) -> list[str]:
    """`present` in the report's `order`, anything unknown after it, alphabetically."""
    present = set(present)
    return [d for d in dict.fromkeys(order) if d in present] + sorted(present - set(order))


def fmt_list(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
