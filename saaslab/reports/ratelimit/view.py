"""The rate-limiting report's view of one source (its rows by cell), the tenant groups of the noisy
neighbour shared by both sources, and numbers as words."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from saaslab import patterns
from saaslab.report import MISSING, Cells, RunData, Summary, fmt_g, fmt_num, ordered
from saaslab.results import ALL_TENANTS
from scenarios.ratelimit_shedding import SHED_DESIGNS

DESIGN_ORDER = tuple(d.name for d in patterns.get("ratelimit").designs)
UNSAFE = next(d.name for d in patterns.get("ratelimit").designs if d.unsafe)
"""Decides as fixed_window but reads and writes in two round trips: the design the checker must catch."""
NOISY = "noisy"
QUIET = ("quiet1", "quiet2", "quiet3", "quiet4")

COMPARED_LOAD_POINTS = (1.0, 2.0, 10.0)
"""The simulated-versus-measured table's load points until a live run says which it measured."""
PROMISED_WINDOW_RATIO = {"sliding_log": 1.0}
"""Most admitted in any span of one window, over the limit, that each algorithm promises (invariants.py):
the exact log 1x; aligned windows (fixed, sliding counter, naive) and a full bucket plus its refill
(token bucket, GCRA) up to 2x."""
DEFAULT_PROMISE = 2.0
SAME_VALUE = 0.005
"""Means closer than this (in the metric's unit) are reported as equal."""
AGREEMENT_PCT = 25.0
"""Simulated and measured 429 rates within this many percent of each other count as agreeing."""
NO_LIVE = "no live run yet"


def order(designs: Iterable[str]) -> list[str]:
    return ordered(designs, DESIGN_ORDER)


@dataclass
class View(Cells):
    """One source's rows by cell, with the ratelimit report's combinations of them."""

    @classmethod
    def of(cls, run: RunData) -> View:
        # The load shedder's designs share the run but not these tables (see shedding.py).
        return cls.from_run(run, DESIGN_ORDER, keep=lambda r: r.design not in SHED_DESIGNS)

    def run_seeds(self, design: str, metric: str, lp: float) -> dict[int, float]:
        """A run-level ("*") metric per seed; `lp` last, for `partial`."""
        return self.seeds(design, lp, metric, ALL_TENANTS)

    def per_seed(self, design: str, lp: float, parts: Sequence[tuple[str, str]],
                 combine: Callable[[list[float]], float]) -> dict[int, float]:
        """Per seed, `combine` the values of (tenant, metric) `parts` (seeds that have them all)."""
        found = [self.seeds(design, lp, m, t) for t, m in parts]
        if not found or not all(found):
            return {}
        return {s: combine([f[s] for f in found]) for s in sorted(set.intersection(*(set(f) for f in found)))}

    def combined(self, design: str, lp: float, parts: Sequence[tuple[str, str]],
                 combine: Callable[[list[float]], float]) -> Summary:
        found = self.per_seed(design, lp, parts, combine)
        return Summary.of(found.values()) if found else MISSING

    @property
    def top_load(self) -> float:
        return self.load_points[-1]

    @property
    def strict(self) -> list[str]:
        return [d for d in self.designs if d != UNSAFE]


def wrong_seeds(v: View, design: str, lp: float, prefix: str = "accuracy") -> dict[int, float]:
    """False admits plus false rejects (percent of offered), per seed."""
    return v.per_seed(design, lp, [(ALL_TENANTS, f"{prefix}_false_admit_pct"),
                                   (ALL_TENANTS, f"{prefix}_false_reject_pct")], sum)


def wrong(v: View, design: str, lp: float, prefix: str = "accuracy") -> Summary:
    found = wrong_seeds(v, design, lp, prefix)
    return Summary.of(found.values()) if found else MISSING


def error_seeds(v: View, design: str, lp: float) -> dict[int, float]:
    """Admission error, per seed: how far (in percent) the admitted count is from an exact sliding window's."""
    return v.per_seed(design, lp, [(ALL_TENANTS, "accuracy_admitted_vs_exact_pct")], lambda xs: abs(xs[0] - 100.0))


def error(v: View, design: str, lp: float) -> Summary:
    found = error_seeds(v, design, lp)
    return Summary.of(found.values()) if found else MISSING


def over_loads(v: View, per_load: Callable[[float], dict[int, float]]) -> Summary | None:
    """Each seed's mean over the load points, summarised over seeds (None unless every load has it)."""
    found = [per_load(lp) for lp in v.load_points]
    if not found or not all(found):
        return None
    common = sorted(set.intersection(*(set(f) for f in found)))
    return Summary.of(sum(f[s] for f in found) / len(found) for s in common)


# --- tenant groups of the noisy neighbour (shared by both sources) ---------------------------------

GROUPS = ("noisy", "quiet", "all")
GROUP_LABELS = {"noisy": "noisy", "quiet": "quiet (mean of 4)", "all": "all tenants"}


def mean_of(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _pooled_rejected_pct(parts: list[float]) -> float:
    """All tenants' 429 rate from each tenant's (rejected_pct, admitted_x_quota) pairs, flattened.

    Offered = admitted / (1 - rejected); every tenant's admitted_x_quota shares one quota, which
    cancels. A tenant refused everything has no admitted count to recover its offered count from.
    """
    pairs = list(zip(parts[0::2], parts[1::2], strict=True))
    if any(pct >= 100.0 for pct, _ in pairs):
        return float("nan")
    offered = [adm / (1 - pct / 100.0) for pct, adm in pairs]
    total = sum(offered)
    if total == 0:
        return float("nan")
    return 100.0 * sum(o * pct / 100.0 for o, (pct, _) in zip(offered, pairs, strict=True)) / total


def sim_rejected_pct(v: View, design: str, lp: float, group: str) -> Summary:
    """The simulated 429 rate (percent) of a tenant group in the noisy-neighbour experiment."""
    if group == "noisy":
        return v.get(design, lp, "neighbour_rejected_pct", NOISY)
    quiet = [q for q in QUIET if v.seeds(design, lp, "neighbour_rejected_pct", q)]
    if group == "quiet":
        return v.combined(design, lp, [(q, "neighbour_rejected_pct") for q in quiet], mean_of) if quiet else MISSING
    parts = [(t, m) for t in (NOISY, *quiet) for m in ("neighbour_rejected_pct", "neighbour_admitted_x_quota")]
    return v.combined(design, lp, parts, _pooled_rejected_pct)


def live_value(v: View, design: str, lp: float, group: str, metric: str, scale: float = 1.0) -> Summary:
    """A measured group value: the noisy tenant's, the mean of the quiet tenants', or the run's."""
    tenants = {"noisy": [NOISY], "quiet": [q for q in QUIET if v.seeds(design, lp, metric, q)],
               "all": [ALL_TENANTS]}[group]
    if not tenants:
        return MISSING
    return v.combined(design, lp, [(t, metric) for t in tenants], lambda xs: scale * mean_of(xs))


# --- numbers as words ---------------------------------------------------------------------------

def pct_words(s: Summary) -> str:
    return f"{fmt_num(s.mean)}%"


def x_words(s: Summary) -> str:
    return f"{fmt_num(s.mean)}x"


def bytes_words(x: float) -> str:
    return f"{x:,.0f} bytes"


def groups_of(items: list[tuple[str, float]]) -> list[tuple[list[str], float]]:
    """(design, value) sorted by value, designs with equal values (within SAME_VALUE) grouped."""
    out: list[tuple[list[str], float]] = []
    for d, x in sorted(items, key=lambda dx: dx[1]):
        if out and abs(out[-1][1] - x) <= SAME_VALUE:
            out[-1][0].append(d)
        else:
            out.append(([d], x))
    return out


def span(values: list[float], fmt: Callable[[float], str]) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if abs(hi - lo) <= SAME_VALUE else f"{fmt(lo)} to {fmt(hi)}"

def policy_text(policy: dict[str, Any]) -> str:
    return f"{policy['requests']} per {fmt_g(policy['window_s'])} s"
