"""The rate-limiting report: which algorithm keeps a tenant within its quota most accurately, at what
memory cost, and which ones stay correct under concurrency and clock skew.

The tables, plots and conclusions come from `scenarios/ratelimit.py` (its docstring names every
metric): only a simulation can judge each decision against an exact sliding log, flood a window
boundary, skew app-server clocks and stage the race, and it has the seeds for confidence intervals.

The live run (`saaslab load ratelimit`: the noisy neighbour against the service) writes rows with
design = algorithm, load_point = the noisy tenant's offered rate over its quota, tenants `noisy` and
`quiet1`..`quiet4` with `rejected_rate` (fraction answered 429) and `latency_p99` (ms), the same two
for the whole run (tenant "*"), and `live/check.json`. It fills the simulated-versus-measured table
(429 rate and p99 per tenant group, with the gap) and the invariants. The simulation supplies the
429 rate from its noisy-neighbour experiment; it has no latency model, so its p99 reads "not modelled".
The live run.json's `race` (simultaneous requests of one tenant across the service's workers)
gives one more conclusion, and its `policy` and `duration_s` are checked against the simulated
neighbour experiment's, so a comparison that is not like for like says so.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from matplotlib.figure import Figure as MplFigure

from saaslab.report import (
    Figure,
    PatternData,
    Report,
    RunData,
    Summary,
    Table,
    checks_sentence,
    checks_table,
    figure_data_uri,
    fmt_g,
    fmt_gap,
    fmt_list,
    fmt_load,
    fmt_loads,
    fmt_num,
    gap_percent,
    grouped_bars,
    load_key,
    ordered,
)
from saaslab.results import ALL_TENANTS
from scenarios.ratelimit_shedding import SHED_DESIGNS

PATTERN = "ratelimit"
QUESTION = ("Which limiting algorithm keeps a tenant within its quota most accurately, at what memory cost, "
            "and which ones stay correct under concurrency and clock skew?")
DESIGN_ORDER = ("fixed_window", "sliding_log", "sliding_counter", "token_bucket", "gcra", "naive")
UNSAFE = "naive"
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
MIN_SEEDS = 5

MISSING = Summary(mean=float("nan"), ci95=float("nan"), n=0)
NO_LIVE = "no live run yet"


def _order(designs: Iterable[str]) -> list[str]:
    return ordered(designs, DESIGN_ORDER)


# --- one source, indexed ------------------------------------------------------------------------

@dataclass
class View:
    """One source's rows, indexed by (design, load point, tenant, metric) -> {seed: value}."""

    run: RunData
    values: dict[tuple[str, float, str, str], dict[int, float]]
    designs: list[str]
    load_points: list[float]

    @classmethod
    def of(cls, run: RunData) -> View:
        values: dict[tuple[str, float, str, str], dict[int, float]] = defaultdict(dict)
        for r in run.rows:
            values[(r.design, load_key(r.load_point), r.tenant, r.metric)][r.seed] = r.value
        # The load shedder's designs (scenarios/ratelimit_shedding.py) share the run but not these tables.
        return cls(run=run, values=dict(values), designs=_order(r.design for r in run.rows
                                                                if r.design not in SHED_DESIGNS),
                   load_points=sorted({load_key(r.load_point) for r in run.rows}))

    def seeds(self, design: str, lp: float, tenant: str, metric: str) -> dict[int, float]:
        return self.values.get((design, load_key(lp), tenant, metric), {})

    def run_seeds(self, design: str, metric: str, lp: float) -> dict[int, float]:
        """A run-level ("*") metric per seed; `lp` last, for `partial`."""
        return self.seeds(design, lp, ALL_TENANTS, metric)

    def get(self, design: str, lp: float, metric: str, tenant: str = ALL_TENANTS) -> Summary:
        found = self.seeds(design, lp, tenant, metric)
        return Summary.of(found.values()) if found else MISSING

    def has(self, metric: str) -> bool:
        return any(k[3] == metric for k in self.values)

    def per_seed(self, design: str, lp: float, parts: Sequence[tuple[str, str]],
                 combine: Callable[[list[float]], float]) -> dict[int, float]:
        """Per seed, `combine` the values of (tenant, metric) `parts` (seeds that have them all)."""
        found = [self.seeds(design, lp, t, m) for t, m in parts]
        if not found or not all(found):
            return {}
        return {s: combine([f[s] for f in found]) for s in sorted(set.intersection(*(set(f) for f in found)))}

    def combined(self, design: str, lp: float, parts: Sequence[tuple[str, str]],
                 combine: Callable[[list[float]], float]) -> Summary:
        found = self.per_seed(design, lp, parts, combine)
        return Summary.of(found.values()) if found else MISSING

    @property
    def max_seeds(self) -> int:
        return max((len(v) for v in self.values.values()), default=0)

    @property
    def top_load(self) -> float:
        return self.load_points[-1]

    @property
    def strict(self) -> list[str]:
        return [d for d in self.designs if d != UNSAFE]


def _wrong_seeds(v: View, design: str, lp: float, prefix: str = "accuracy") -> dict[int, float]:
    """False admits plus false rejects (percent of offered), per seed."""
    return v.per_seed(design, lp, [(ALL_TENANTS, f"{prefix}_false_admit_pct"),
                                   (ALL_TENANTS, f"{prefix}_false_reject_pct")], sum)


def _wrong(v: View, design: str, lp: float, prefix: str = "accuracy") -> Summary:
    found = _wrong_seeds(v, design, lp, prefix)
    return Summary.of(found.values()) if found else MISSING


def _error_seeds(v: View, design: str, lp: float) -> dict[int, float]:
    """Admission error, per seed: how far (in percent) the admitted count is from an exact sliding window's."""
    return v.per_seed(design, lp, [(ALL_TENANTS, "accuracy_admitted_vs_exact_pct")], lambda xs: abs(xs[0] - 100.0))


def _error(v: View, design: str, lp: float) -> Summary:
    found = _error_seeds(v, design, lp)
    return Summary.of(found.values()) if found else MISSING


def _over_loads(v: View, per_load: Callable[[float], dict[int, float]]) -> Summary | None:
    """Each seed's mean over the load points, summarised over seeds (None unless every load has it)."""
    found = [per_load(lp) for lp in v.load_points]
    if not found or not all(found):
        return None
    common = sorted(set.intersection(*(set(f) for f in found)))
    return Summary.of(sum(f[s] for f in found) / len(found) for s in common)


# --- tenant groups of the noisy neighbour (shared by both sources) ---------------------------------

GROUPS = ("noisy", "quiet", "all")
GROUP_LABELS = {"noisy": "noisy", "quiet": "quiet (mean of 4)", "all": "all tenants"}


def _mean(xs: list[float]) -> float:
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
    quiet = [q for q in QUIET if v.seeds(design, lp, q, "neighbour_rejected_pct")]
    if group == "quiet":
        return v.combined(design, lp, [(q, "neighbour_rejected_pct") for q in quiet], _mean) if quiet else MISSING
    parts = [(t, m) for t in (NOISY, *quiet) for m in ("neighbour_rejected_pct", "neighbour_admitted_x_quota")]
    return v.combined(design, lp, parts, _pooled_rejected_pct)


def live_value(v: View, design: str, lp: float, group: str, metric: str, scale: float = 1.0) -> Summary:
    """A measured group value: the noisy tenant's, the mean of the quiet tenants', or the run's."""
    tenants = {"noisy": [NOISY], "quiet": [q for q in QUIET if v.seeds(design, lp, q, metric)],
               "all": [ALL_TENANTS]}[group]
    if not tenants:
        return MISSING
    return v.combined(design, lp, [(t, metric) for t in tenants], lambda xs: scale * _mean(xs))


# --- numbers as words ---------------------------------------------------------------------------

def _pct(s: Summary) -> str:
    return f"{fmt_num(s.mean)}%"


def _x(s: Summary) -> str:
    return f"{fmt_num(s.mean)}x"


def _bytes(x: float) -> str:
    return f"{x:,.0f} bytes"


def _groups_of(items: list[tuple[str, float]]) -> list[tuple[list[str], float]]:
    """(design, value) sorted by value, designs with equal values (within SAME_VALUE) grouped."""
    out: list[tuple[list[str], float]] = []
    for d, x in sorted(items, key=lambda dx: dx[1]):
        if out and abs(out[-1][1] - x) <= SAME_VALUE:
            out[-1][0].append(d)
        else:
            out.append(([d], x))
    return out


def _span(values: list[float], fmt: Callable[[float], str]) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if abs(hi - lo) <= SAME_VALUE else f"{fmt(lo)} to {fmt(hi)}"


# --- conclusions ----------------------------------------------------------------------------------

def _accuracy_ranking(v: View) -> list[tuple[str, Summary]]:
    """The atomic designs by admission error averaged over the load points, smallest first.

    Admitted-versus-exact ranks them rather than false decisions: under heavy overload every arrival
    meets whatever room a cautious limiter leaves unused, so false rejects grow with load even for a
    limiter whose throughput is close to exact (the scenario's docstring says so too).
    """
    ranked = []
    for d in v.strict:
        score = _over_loads(v, partial(_error_seeds, v, d))
        if score is not None:
            ranked.append((d, score))
    return sorted(ranked, key=lambda ds: ds[1].mean)


def _memory(v: View, design: str) -> Summary:
    return v.get(design, v.top_load, "memory_state_bytes_mean")


def _race_verdicts(v: View) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[float, float]]]:
    """Per design: (runs where no_over_admission held, runs) and (worst admitted/limit, its load)."""
    held: dict[str, tuple[int, int]] = {}
    worst: dict[str, tuple[float, float]] = {}
    for d in v.designs:
        runs = [x for lp in v.load_points for x in v.seeds(d, lp, ALL_TENANTS, "race_no_over_admission").values()]
        if runs:
            held[d] = (sum(1 for x in runs if x >= 0.5), len(runs))
        ratios = [(s.mean, lp) for lp in v.load_points if (s := v.get(d, lp, "race_admitted_ratio")).known]
        if ratios:
            worst[d] = max(ratios)
    return held, worst


def _promise(design: str) -> float:
    return PROMISED_WINDOW_RATIO.get(design, DEFAULT_PROMISE)


@dataclass
class SkewVerdict:
    """At the top load, the most admitted in one window against each design's promise."""

    broken: list[tuple[str, Summary, Summary]]
    """(design, with agreeing clocks, with skewed clocks) for designs past their promise when skewed."""
    kept: list[str]

    @property
    def atomic_broken(self) -> list[str]:
        return [d for d, _, _ in self.broken if d != UNSAFE]


def _skew_verdict(v: View) -> SkewVerdict:
    broken, kept = [], []
    for d in v.designs:
        agree, skewed = (v.get(d, v.top_load, f"{p}_max_window_ratio") for p in ("cluster", "skew"))
        if not skewed.known:
            continue
        if skewed.mean > _promise(d) + SAME_VALUE:
            broken.append((d, agree, skewed))
        else:
            kept.append(d)
    return SkewVerdict(broken, kept)


def _clocks(v: View) -> str:
    skew_ms = v.run.parameters.get("skew_ms")
    return f"±{fmt_g(skew_ms)} ms apart" if skew_ms is not None else "skewed"


def _headline(v: View) -> str:
    parts = []
    ranked = _accuracy_ranking(v)
    if ranked:
        def described(d: str, s: Summary) -> str:
            mem = _memory(v, d)
            cost = f", {_bytes(mem.mean)} per tenant" if mem.known else ""
            return f"{d} ({fmt_num(s.mean)}% off an exact sliding window's admissions{cost})"

        best, b = ranked[0]
        head = f"Of the atomic algorithms, {described(best, b)} kept a tenant closest to its quota"
        if len(ranked) > 1:
            head += f", {described(*ranked[1])} came next"
        cheap = min(((d, m) for d, _ in ranked if (m := _memory(v, d)).known), key=lambda dm: dm[1].mean,
                    default=None)
        if cheap and cheap[0] not in [d for d, _ in ranked[:2]]:
            head += f" and the cheapest was {described(cheap[0], dict(ranked)[cheap[0]])}"
        parts.append(head)
    held, worst = _race_verdicts(v)
    if held:
        safe = [d for d, (ok, n) in held.items() if ok == n]
        unsafe = [d for d, (ok, n) in held.items() if ok < n]
        strict_all = set(safe) == set(v.strict) and len(safe) > 1
        race = (f"all {len(safe)} atomic algorithms stayed within the limit when requests raced" if strict_all
                else f"{fmt_list(safe)} stayed within the limit when requests raced" if safe
                else "no algorithm stayed within the limit when requests raced")
        if unsafe:
            race += " while " + fmt_list([f"{d} admitted up to {fmt_num(worst[d][0])}x it" for d in unsafe
                                          if d in worst])
        parts.append(race)
    skew = _skew_verdict(v)
    if skew.atomic_broken:
        parts.append(f"with app clocks {_clocks(v)}, {fmt_list(skew.atomic_broken)} admitted more in one window "
                     "than they promise")
    elif skew.kept:
        parts.append(f"app clocks {_clocks(v)} pushed no atomic algorithm past its promise")
    if not parts:
        return "The simulated rows hold none of the accuracy, race or skew metrics, so the question stays open."
    return "; ".join(parts) + "."


def _accuracy_sentence(v: View) -> str | None:
    ranked = _accuracy_ranking(v)
    if len(ranked) < 2:
        return None
    lines = []
    for d, s in ranked:
        fa = _over_loads(v, partial(v.run_seeds, d, "accuracy_false_admit_pct"))
        fr = _over_loads(v, partial(v.run_seeds, d, "accuracy_false_reject_pct"))
        wrong = f" ({_pct(fa)} false admits, {_pct(fr)} false rejects)" if fa and fr else ""
        lines.append(f"{d} {s.text('%')}{wrong}")
    return (f"Admission error (how far the admitted count is from an exact sliding window's, averaged over "
            f"{fmt_loads(v.load_points)}; mean ± 95% CI over seeds), with the decisions each got wrong: "
            + "; ".join(lines) + ". False rejects grow with overload for a cautious limiter, so read them beside "
            "the error.")


def _separation_sentence(v: View) -> str | None:
    """Whether the most accurate design's lead over the runner-up is larger than the 95% CIs, per load."""
    clear, overlap = [], []
    for lp in v.load_points:
        ranked = sorted(((d, s) for d in v.strict if (s := _error(v, d, lp)).known), key=lambda ds: ds[1].mean)
        if len(ranked) < 2 or math.isnan(ranked[0][1].ci95) or math.isnan(ranked[1][1].ci95):
            continue
        (d1, s1), (d2, s2) = ranked[0], ranked[1]
        (clear if s1.high < s2.low else overlap).append((lp, d1, d2))
    out = []
    if clear:
        pairs = sorted({(d1, d2) for _, d1, d2 in clear})
        out.append(f"At {fmt_loads([lp for lp, _, _ in clear])} the most accurate algorithm's lead over the runner-up "
                   f"({'; '.join(f'{a} over {b}' for a, b in pairs)}) is larger than the 95% CIs.")
    for d1, d2 in sorted({(d1, d2) for _, d1, d2 in overlap}):
        lps = [lp for lp, a, b in overlap if (a, b) == (d1, d2)]
        out.append(f"At {fmt_loads(lps)} {d1} and {d2} overlap within their 95% CIs on admission error, so this "
                   "data cannot separate them there.")
    return " ".join(out) or None


def _over_under_sentence(v: View) -> str | None:
    lp = v.top_load
    items = [(d, s.mean) for d in v.strict if (s := v.get(d, lp, "accuracy_admitted_vs_exact_pct")).known]
    if len(items) < 2:
        return None
    groups = sorted(_groups_of(items), key=lambda g: -g[1])
    listed = [f"{fmt_list(ds)} {fmt_num(x)}%" for ds, x in groups]
    return (f"At load {fmt_load(lp)} the algorithms admitted, of what an exact sliding window admits of the same "
            f"arrivals: {', '.join(listed)} (above 100% lets the tenant past its quota).")


def _boundary_sentence(v: View) -> str | None:
    lp = v.top_load
    items = [(d, s.mean) for d in v.designs if (s := v.get(d, lp, "boundary_burst_ratio")).known]
    if len(items) < 2:
        return None
    groups = _groups_of(items)
    (low_d, low), (high_d, high) = groups[0], groups[-1]
    spread = v.run.parameters.get("boundary_spread")
    where = f"within ±{fmt_g(100 * spread)}% of a window around its boundary" if spread else "around a window boundary"
    text = (f"A flood of {fmt_g(lp)}x the limit {where} got {fmt_list(high_d)} to admit {fmt_num(high)}x the limit, "
            f"{fmt_list(low_d)} {fmt_num(low)}x")
    middle = [x for _, x in groups[1:-1]]
    if middle:
        text += f", the others {_span(middle, lambda x: f'{fmt_num(x)}x')}"
    return text + "."


def _memory_sentence(v: View) -> str | None:
    ranked = sorted(((d, s.mean) for d in v.designs if (s := _memory(v, d)).known), key=lambda dx: dx[1])
    if len(ranked) < 2:
        return None
    text = (f"Redis state per tenant (mean at load {fmt_load(v.top_load)}): "
            + ", ".join(f"{d} {_bytes(x)}" for d, x in ranked)
            + f"; the largest is {fmt_num(ranked[-1][1] / ranked[0][1])}x the smallest")
    first = v.load_points[0]
    growing = [(d, low.mean) for d, top in ranked
               if (low := v.get(d, first, "memory_state_bytes_mean")).known and top > 1.1 * low.mean]
    if growing and first != v.top_load:
        text += (f". It grows with the requests admitted for {fmt_list([d for d, _ in growing])} ("
                 + ", ".join(f"{_bytes(x)} at load {fmt_load(first)}" for _, x in growing)
                 + "); the others' stays constant")
    return text + "."


def _neighbour_sentence(v: View) -> str | None:
    quiet = [(d, lp, s) for d in v.designs for lp in v.load_points
             if (s := sim_rejected_pct(v, d, lp, "quiet")).known]
    noisy = [s.mean for d in v.designs if (s := sim_rejected_pct(v, d, v.top_load, "noisy")).known]
    if not quiet or not noisy:
        return None
    worst_d, worst_lp, worst = max(quiet, key=lambda x: x[2].mean)
    admitted = [s.mean for d in v.designs if (s := v.get(d, v.top_load, "neighbour_noisy_admitted_x_quota")).known]
    noisy_text = (f"the noisy tenant at {fmt_load(v.top_load)}x its quota was refused "
                  f"{_span(noisy, lambda x: f'{fmt_num(x)}%')} of its requests")
    if admitted:
        noisy_text += f" and still got {_span(admitted, lambda x: f'{fmt_num(x)}x')} its quota through"
    if worst.mean == 0:
        return (f"Limits are per tenant: under every algorithm and load the quiet tenants were never refused, "
                f"while {noisy_text}.")
    return (f"The quiet tenants were refused up to {_pct(worst)} of their requests ({worst_d} at load "
            f"{fmt_load(worst_lp)}), while {noisy_text}.")


def _race_sentence(v: View) -> str | None:
    held, worst = _race_verdicts(v)
    if not held:
        return None
    params = v.run.parameters
    race = params.get("race_policy") or {}
    setup = []
    if params.get("race_spread_us"):
        setup.append(f"arriving within {fmt_g(params['race_spread_us'] / 1000)} ms")
    if params.get("servers"):
        setup.append(f"across {params['servers']} app servers")
    if race.get("requests"):
        setup.append(f"at a limit of {race['requests']} per {fmt_g(race['window_s'])} s")
    how = f" ({', '.join(setup)})" if setup else ""
    safe = [d for d, (ok, n) in held.items() if ok == n]
    out = []
    if safe:
        most = max((worst[d][0] for d in safe if d in worst), default=float("nan"))
        out.append(f"{fmt_list(safe)} passed no_over_admission in every run and admitted at most "
                   f"{fmt_num(most)}x the limit")
    for d, (ok, n) in held.items():
        if ok < n:
            ratio, lp = worst.get(d, (float("nan"), float("nan")))
            runs = {load: v.seeds(d, load, ALL_TENANTS, "race_no_over_admission") for load in v.load_points}
            failed = [load for load, r in runs.items() if any(x < 0.5 for x in r.values())]
            every = all(x < 0.5 for load in failed for x in runs[load].values())
            out.append(f"{d} failed it in {n - ok} of {n} runs ({'every run' if every else 'runs'} at "
                       f"{fmt_loads(failed)}), admitting up to {fmt_num(ratio)}x the limit (at load {fmt_load(lp)})")
    return f"In the race{how}, " + "; ".join(out) + "."


def _skew_sentence(v: View) -> str | None:
    skew = _skew_verdict(v)
    if not (skew.broken or skew.kept):
        return None
    lp = v.top_load
    out = []
    atomic = [(d, agree, skewed) for d, agree, skewed in skew.broken if d != UNSAFE]
    if atomic:
        out.append(f"{fmt_list([d for d, _, _ in atomic])} admitted more in one window than they promise: " + "; ".join(
            f"{d} {skewed.text('x')} (promise {fmt_g(_promise(d))}x; {_x(agree)} with agreeing clocks)"
            for d, agree, skewed in atomic))
    if skew.kept:
        out.append(f"{fmt_list(skew.kept)} stayed within {'its' if len(skew.kept) == 1 else 'their'} promise")
    text = f"With app-server clocks {_clocks(v)} (load {fmt_load(lp)}, judged in true time), " + ", while ".join(out)
    for d, agree, skewed in skew.broken:
        if d == UNSAFE:
            text += (f". {d} reached {_x(skewed)} ({_x(agree)} with agreeing clocks): its race, more than the "
                     "clocks")
    changes = []
    for d in v.strict:
        agree, skewed = _wrong(v, d, lp, "cluster"), _wrong(v, d, lp, "skew")
        if agree.known and skewed.known:
            changes.append((abs(skewed.mean - agree.mean), d, agree, skewed))
    if changes:
        _, d, agree, skewed = max(changes, key=lambda c: c[0])
        text += (f". Among the atomic algorithms, skew moved wrong decisions most for {d}: {_pct(agree)} of "
                 f"requests with agreeing clocks, {_pct(skewed)} with skewed ones")
    return text + "."


def _naive_sentence(v: View) -> str | None:
    """The unsafe design is fixed_window one request at a time: say so when the rows show it."""
    if UNSAFE not in v.designs or "fixed_window" not in v.designs or not v.has("accuracy_admitted"):
        return None
    same = all(v.seeds(UNSAFE, lp, ALL_TENANTS, m) == v.seeds("fixed_window", lp, ALL_TENANTS, m)
               for lp in v.load_points for m in ("accuracy_admitted", "boundary_burst_ratio"))
    if not same:
        return None
    return (f"{UNSAFE} admitted exactly what fixed_window admitted whenever requests arrived one at a time "
            "(accuracy and boundary runs): it differs only when requests overlap.")


# --- simulated versus measured -------------------------------------------------------------------

@dataclass
class Comparison:
    design: str
    load_point: float
    group: str
    simulated: bool
    """False: the simulation has no such design or load point (or there is no simulation)."""
    measured: bool
    """False: there is no live run."""
    sim_rate: Summary = MISSING
    live_rate: Summary = MISSING
    live_p99: Summary = MISSING

    @property
    def gap(self) -> float:
        return gap_percent(self.sim_rate.mean, self.live_rate.mean)

    @property
    def rated(self) -> bool:
        return self.sim_rate.known and self.live_rate.known


def _points(diff: float) -> str:
    """A difference in percentage points, without a '-0.0'."""
    return f"{diff:+.1f} pp" if round(diff, 1) != 0 else "0.0 pp"


def _rate_gap(c: Comparison) -> str:
    if not c.rated:
        return "n/a"
    points = _points(c.live_rate.mean - c.sim_rate.mean)
    if c.sim_rate.mean == 0:
        return "±0% (both 0)" if c.live_rate.mean == 0 else f"n/a (sim 0; {points})"
    return f"{fmt_gap(c.gap)} ({points})"


def _comparisons(sim: View | None, live: View | None) -> list[Comparison]:
    if live is not None:
        cells = [(d, lp) for d in live.designs for lp in live.load_points
                 if any(k[0] == d and k[1] == lp for k in live.values)]
    else:
        assert sim is not None
        loads = [lp for lp in COMPARED_LOAD_POINTS if load_key(lp) in sim.load_points]
        cells = [(d, load_key(lp)) for d in sim.designs for lp in loads]
    out = []
    for d, lp in cells:
        simulated = sim is not None and d in sim.designs and lp in sim.load_points
        for g in GROUPS:
            c = Comparison(d, lp, g, simulated=simulated, measured=live is not None)
            if sim is not None and simulated:
                c.sim_rate = sim_rejected_pct(sim, d, lp, g)
            if live is not None:
                c.live_rate = live_value(live, d, lp, g, "rejected_rate", 100.0)
                c.live_p99 = live_value(live, d, lp, g, "latency_p99")
            out.append(c)
    return out


def _sim_vs_live_table(comps: list[Comparison], sim_present: bool) -> Table:
    rows = []
    for c in comps:
        if c.simulated:
            sim_cell = c.sim_rate.text("%")
        else:
            sim_cell = "not simulated" if sim_present else "no simulation"
        live_rate = c.live_rate.text("%") if c.measured else NO_LIVE
        live_p99 = c.live_p99.text(" ms") if c.measured else NO_LIVE
        rows.append([c.design, fmt_load(c.load_point), GROUP_LABELS[c.group], sim_cell, live_rate, _rate_gap(c),
                     "not modelled", live_p99, "n/a"])
    return Table("Noisy neighbour: simulated versus measured",
                 ["design", "load (x quota)", "tenants", "429 rate simulated", "429 rate measured", "gap",
                  "p99 simulated", "p99 measured", "gap"], rows,
                 caption=("429 rate: share of requests refused (simulated: mean ± 95% CI over seeds). gap = "
                          "(measured − simulated) / simulated, with the difference in percentage points. The "
                          "simulation decides without a latency model, so its p99 is not modelled. The 'all "
                          "tenants' simulated rate pools each tenant's refusals by its offered requests."))


def _agreement_sentences(comps: list[Comparison]) -> list[str]:
    rated = [c for c in comps if c.rated]
    if not rated:
        return ["The live run shares no (algorithm, load point) with a simulated 429 rate, so the two cannot be "
                "compared."]
    agree = [c for c in rated if (c.sim_rate.mean == c.live_rate.mean == 0)
             or (not math.isnan(c.gap) and abs(c.gap) <= AGREEMENT_PCT)]
    out = [f"{len(agree)} of {len(rated)} simulated 429 rates are within {AGREEMENT_PCT:g}% of the measured ones."]
    gaps = [c for c in rated if not math.isnan(c.gap)]
    if gaps:
        w = max(gaps, key=lambda c: abs(c.gap))
        out.append(f"The largest relative gap is {w.design} at load {fmt_load(w.load_point)} ({GROUP_LABELS[w.group]}): "
                   f"simulated {_pct(w.sim_rate)}, measured {_pct(w.live_rate)} ({fmt_gap(w.gap)}).")
    unforeseen = [c for c in rated if c.sim_rate.mean == 0 < c.live_rate.mean]
    if unforeseen:
        out.append("Measured refusals where the simulation refused none: " + "; ".join(
            f"{c.design} at load {fmt_load(c.load_point)} ({GROUP_LABELS[c.group]}) {_pct(c.live_rate)}"
            for c in unforeseen) + ".")
    p99 = [c.live_p99.mean for c in comps if c.live_p99.known]
    if p99:
        out.append(f"Measured p99 ranged {_span(p99, lambda x: f'{fmt_num(x)} ms')}; the simulation has no latency "
                   "model to set beside it.")
    return out


def _same_seed_sentence(sim: View, live: View, comps: list[Comparison]) -> str | None:
    """The noisy tenant's 429 rate against the simulation of the very schedule the live run replayed.

    A live run replays one seed's arrivals; the simulated mean is over several seeds. Where the
    simulation has the live seed, the like-for-like difference is that seed's, not the mean's.
    """
    seeds = {r.seed for r in live.run.rows}
    if len(seeds) != 1:
        return None
    seed = next(iter(seeds))
    diffs = []
    for d in live.designs:
        for lp in live.load_points:
            simulated = sim.seeds(d, lp, NOISY, "neighbour_rejected_pct").get(seed)
            measured = live.seeds(d, lp, NOISY, "rejected_rate").get(seed)
            if simulated is not None and measured is not None:
                diffs.append((abs(100.0 * measured - simulated), d, lp, simulated, 100.0 * measured))
    if not diffs:
        return None
    worst, d, lp, simulated, measured = max(diffs)
    text = (f"Against the simulation of the very schedule the live run replayed (seed {seed}), the noisy tenant's "
            "measured 429 rate ")
    if round(worst, 1) == 0:
        text += f"equalled the simulated one to 0.1 pp in all {len(diffs)} cells"
    else:
        text += (f"differed by at most {worst:.1f} pp over {len(diffs)} cells ({d} at load {fmt_load(lp)}: simulated "
                 f"{fmt_num(simulated)}%, measured {fmt_num(measured)}%)")
    mean_gaps = [abs(c.live_rate.mean - c.sim_rate.mean) for c in comps if c.group == "noisy" and c.rated]
    if mean_gaps and max(mean_gaps) > worst + SAME_VALUE:
        text += (f", less than the {max(mean_gaps):.1f} pp of the largest gap against the mean over seeds: that gap "
                 "is the seeds' spread")
    return text + "."


# --- tables ---------------------------------------------------------------------------------------

def _accuracy_table(v: View) -> Table:
    rows = []
    for d in v.designs:
        for lp in v.load_points:
            if not v.seeds(d, lp, ALL_TENANTS, "accuracy_offered"):
                continue
            rows.append([d, fmt_load(lp), v.get(d, lp, "accuracy_rejected_pct").text("%"),
                         v.get(d, lp, "accuracy_admitted_vs_exact_pct").text("%"),
                         v.get(d, lp, "accuracy_false_admit_pct").text("%"),
                         v.get(d, lp, "accuracy_false_reject_pct").text("%"),
                         v.get(d, lp, "accuracy_max_window_ratio").text("x"),
                         str(len(v.seeds(d, lp, ALL_TENANTS, "accuracy_offered")))])
    return Table("Accuracy against an exact sliding log (simulated)",
                 ["design", "load (x limit)", "429 rate", "admitted vs exact", "false admits", "false rejects",
                  "most in any window", "seeds"], rows,
                 caption=("One bursty tenant. False admits/rejects: decisions the exact rule over the same "
                          "admissions would have made the other way, in percent of requests. 'Most in any window': "
                          "the most admitted in any span of one window, over the limit. Mean ± 95% CI over seeds."))


def _boundary_memory_table(v: View) -> Table:
    rows = []
    for d in v.designs:
        rows.append([d, *(v.get(d, lp, "boundary_burst_ratio").text("x") for lp in v.load_points),
                     _memory(v, d).text(), v.get(d, v.top_load, "memory_state_bytes_max").text()])
    return Table("Window boundary and memory per tenant (simulated)",
                 ["design", *(f"boundary flood {fmt_load(lp)}x" for lp in v.load_points),
                  f"state bytes, mean (load {fmt_load(v.top_load)})", "state bytes, max"], rows,
                 caption=("Boundary flood Lx: an idle tenant sends L x the limit evenly around a window boundary; "
                          "cells are admitted over the limit. State bytes: estimated Redis memory of the "
                          "tenant's limiter key."))


def _neighbour_table(v: View) -> Table:
    rows = []
    for d in v.designs:
        quiet = [s.mean for lp in v.load_points if (s := sim_rejected_pct(v, d, lp, "quiet")).known]
        rows.append([d, *(sim_rejected_pct(v, d, lp, "noisy").text("%") for lp in v.load_points),
                     f"{fmt_num(max(quiet))}%" if quiet else "n/a",
                     v.get(d, v.top_load, "neighbour_noisy_admitted_x_quota").text("x")])
    return Table("Noisy neighbour: 429 rates per tenant (simulated)",
                 ["design", *(f"noisy refused at {fmt_load(lp)}x" for lp in v.load_points),
                  "quiet refused (worst load)", f"noisy admitted / quota at {fmt_load(v.top_load)}x"], rows,
                 caption=("One noisy tenant at L x its quota, four quiet ones at half theirs, Poisson arrivals; "
                          "limits are per tenant. Mean ± 95% CI over seeds."))


def _concurrency_table(v: View) -> Table:
    held, _ = _race_verdicts(v)
    lp = v.top_load
    rows = []
    for d in v.designs:
        ok, n = held.get(d, (0, 0))
        rows.append([d, v.get(d, lp, "race_admitted_ratio").text("x"), f"{ok}/{n}" if n else "n/a",
                     v.get(d, lp, "cluster_false_admit_pct").text("%"),
                     v.get(d, lp, "skew_false_admit_pct").text("%"),
                     v.get(d, lp, "skew_false_reject_pct").text("%"),
                     v.get(d, lp, "cluster_max_window_ratio").text("x"),
                     v.get(d, lp, "skew_max_window_ratio").text("x"),
                     f"{fmt_g(PROMISED_WINDOW_RATIO.get(d, DEFAULT_PROMISE))}x"])
    skew_ms = v.run.parameters.get("skew_ms")
    skew = f"±{fmt_g(skew_ms)} ms" if skew_ms is not None else "skewed"
    return Table(f"Concurrency and clock skew at load {fmt_load(lp)} (simulated)",
                 ["design", "race: admitted / limit", "race: no_over_admission held (runs)",
                  "false admits, clocks agree", f"false admits, {skew}", f"false rejects, {skew}",
                  "most in any window, clocks agree", f"most in any window, {skew}", "promise"], rows,
                 caption=("Race: a tenant's requests arrive within milliseconds across the app servers; the check "
                          "column counts runs over all loads and seeds. Clocks: app servers sharing one Redis, "
                          "each passing its own clock; judged in true time. Promise: the most an algorithm may "
                          "admit in one window's span by design."))


# --- figures --------------------------------------------------------------------------------------

def _accuracy_figure(v: View) -> Figure:
    fig = MplFigure(figsize=(9, 3.8), layout="constrained")
    loads = [fmt_load(lp) for lp in v.load_points]
    for i, (metric, title) in enumerate((("accuracy_false_admit_pct", "false admits"),
                                         ("accuracy_false_reject_pct", "false rejects"))):
        ax = fig.add_subplot(1, 2, i + 1)
        grouped_bars(ax, loads, {d: [v.get(d, lp, metric) for lp in v.load_points] for d in v.strict})
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("offered rate (x limit)")
        ax.set_ylabel("percent of requests")
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    return Figure("Wrong decisions against an exact sliding log", figure_data_uri(fig),
                  "Mean over seeds with 95% CI error bars; the exact sliding log sits at zero on both.")


def _boundary_figure(v: View) -> Figure:
    fig = MplFigure(figsize=(8, 3.8), layout="constrained")
    ax = fig.add_subplot()
    grouped_bars(ax, [fmt_load(lp) for lp in v.load_points],
          {d: [v.get(d, lp, "boundary_burst_ratio") for lp in v.load_points] for d in v.designs})
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="the limit")
    ax.axhline(2.0, color="firebrick", linestyle=":", linewidth=1, label="twice the limit")
    ax.set_xlabel("flood size (x limit)")
    ax.set_ylabel("admitted / limit")
    fig.legend(fontsize=7, loc="outside right upper")
    ax.grid(axis="y", alpha=0.3)
    return Figure("Admitted in a flood around a window boundary", figure_data_uri(fig),
                  "The fixed window (and naive, its decision) lets one window's quota through on each side.")


def _memory_figure(v: View) -> Figure:
    fig = MplFigure(figsize=(8, 3.6), layout="constrained")
    ax = fig.add_subplot()
    summaries = [_memory(v, d) for d in v.designs]
    ax.bar(v.designs, [s.mean if s.known else 0.0 for s in summaries],
           yerr=[0.0 if math.isnan(s.ci95) else s.ci95 for s in summaries], capsize=3, color="steelblue")
    ax.set_ylabel(f"Redis bytes per tenant (load {fmt_load(v.top_load)})")
    ax.grid(axis="y", alpha=0.3)
    ax.tick_params(axis="x", labelsize=8)
    return Figure("Memory per tenant", figure_data_uri(fig),
                  "Estimated Redis memory of one tenant's limiter key, mean over the decisions of a run.")


def _race_skew_figure(v: View) -> Figure:
    fig = MplFigure(figsize=(9, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    for i, d in enumerate(v.designs):
        s = [v.get(d, lp, "race_admitted_ratio") for lp in v.load_points]
        # Atomic designs coincide at the limit: shrinking markers keep each one visible.
        ax.plot(v.load_points, [x.mean if x.known else np.nan for x in s], marker="o", markersize=9 - i,
                linestyle="--" if d == UNSAFE else "-", label=d)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(v.load_points, [fmt_load(lp) for lp in v.load_points])
    ax.minorticks_off()
    ax.set_xlabel("requests sent (x limit)")
    ax.set_ylabel("admitted / limit")
    ax.set_title("the race", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    lp = v.top_load
    grouped_bars(ax, [d.replace("_", "\n") for d in v.designs],
          {"clocks agree": [v.get(d, lp, "cluster_max_window_ratio") for d in v.designs],
           "clocks skewed": [v.get(d, lp, "skew_max_window_ratio") for d in v.designs]})
    ax.plot(np.arange(len(v.designs)), [PROMISED_WINDOW_RATIO.get(d, DEFAULT_PROMISE) for d in v.designs], "k_",
            markersize=18, label="promise")
    ax.set_ylabel("most admitted in one window / limit")
    ax.set_title(f"clock skew, load {fmt_load(lp)}", fontsize=10)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return Figure("Concurrency and clock skew", figure_data_uri(fig),
                  "Left: only the read-then-write design admits more than the limit when requests overlap. "
                  "Right: mean over seeds with 95% CI; the black bar is what each algorithm promises.")


def _live_figure(comps: list[Comparison]) -> Figure:
    fig = MplFigure(figsize=(8, 3.8), layout="constrained")
    ax = fig.add_subplot()
    noisy = [c for c in comps if c.group == "noisy" and c.live_rate.known]
    for i, d in enumerate(_order({c.design for c in noisy})):
        mine = sorted((c for c in noisy if c.design == d), key=lambda c: c.load_point)
        color = f"C{i}"
        ax.plot([c.load_point for c in mine], [c.live_rate.mean for c in mine], "D-", color=color,
                label=f"{d} measured")
        sim = [(c.load_point, c.sim_rate.mean) for c in mine if c.sim_rate.known]
        if sim:
            ax.plot(*zip(*sim, strict=True), "o:", color=color, label=f"{d} simulated")
    ax.set_xscale("log")
    loads = sorted({c.load_point for c in noisy})
    ax.set_xticks(loads, [fmt_load(lp) for lp in loads])
    ax.minorticks_off()
    ax.set_xlabel("noisy tenant's offered rate (x quota)")
    ax.set_ylabel("noisy tenant's 429 rate (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return Figure("The noisy tenant's 429 rate, simulated and measured", figure_data_uri(fig),
                  "Diamonds: the live run; circles: the simulation's noisy-neighbour experiment at the same load.")


# --- text about the setup -----------------------------------------------------------------------

def _designs(params: dict[str, Any], present: list[str]) -> dict[str, str]:
    policy = params.get("policy") or {}
    limit = (f"{policy['requests']} requests per {fmt_g(policy['window_s'])} s" if policy.get("requests")
             else "the policy")
    known = {
        "fixed_window": ("A counter per epoch-aligned window: one small hash per tenant; a client can spend one "
                         "window's quota just before a boundary and the next just after it."),
        "sliding_log": ("One timestamp per admitted request: exact over any window, memory grows with the limit "
                        f"({limit})."),
        "sliding_counter": ("Cloudflare's estimate: the previous window's count weighted by its overlap with the "
                            "sliding window, plus the current count."),
        "token_bucket": "A bucket of `requests` tokens refilled at `requests` per window (integer token-µs).",
        "gcra": ("The generic cell rate algorithm: one theoretical arrival time per tenant, a burst of `requests` "
                 "allowed at once."),
        "naive": ("The deliberately unsafe design: fixed_window's decision, but the store reads the count and "
                  "writes it back in two round trips, so overlapping requests read the same count."),
    }
    return {d: known.get(d, "(no description)") for d in present}


def _workload(sim: RunData | None, live: RunData | None) -> list[str]:
    lines = []
    params = sim.parameters if sim else {}
    policy = params.get("policy") or {}
    if policy:
        lines.append(f"Policy: {policy['requests']} requests per {fmt_g(policy['window_s'])} s per tenant.")
    durations = params.get("durations_s") or {}
    if durations:
        lines.append("Accuracy: one tenant with on/off bursty arrivals at the load point x its limit for "
                     f"{fmt_g(durations.get('accuracy', 0))} s, each decision judged against an exact sliding log.")
    if params.get("boundary_spread") is not None:
        lines.append(f"Boundary: an idle tenant sends load point x the limit evenly over ±"
                     f"{fmt_g(100 * params['boundary_spread'])}% of a window around a boundary.")
    if durations.get("neighbour") is not None:
        lines.append(f"Noisy neighbour: one tenant at the load point x its quota and four at "
                     f"{fmt_g(params.get('quiet_multiple', 0.5))}x theirs, Poisson, {fmt_g(durations['neighbour'])} s.")
    if params.get("servers"):
        hop = params.get("network_hop_us") or {}
        net = (f", each hop {fmt_g(hop['base'])} µs plus a mean {fmt_g(hop['jitter_mean'])} µs jitter"
               if hop.get("base") is not None else "")
        lines.append(f"Clocks: {params['servers']} app servers sharing one Redis{net}, for the first "
                     f"{fmt_g(durations.get('skew', 0))} s of the accuracy workload, clocks agreeing and then "
                     f"±{fmt_g(params.get('skew_ms', 0))} ms apart. Letting the script read Redis's own TIME removes "
                     "the skew in the service.")
    race = params.get("race_policy") or {}
    if race:
        lines.append(f"Race: load point x {race['requests']} requests of one tenant within "
                     f"{fmt_g(params.get('race_spread_us', 0) / 1000)} ms across the app servers, at "
                     f"{race['requests']} per {fmt_g(race['window_s'])} s.")
    if params.get("load_points"):
        lines.append(f"Load points: {', '.join(fmt_g(lp) for lp in params['load_points'])} (x the limit); "
                     f"{len(params.get('seeds') or [])} seeds{' (quick durations)' if params.get('quick') else ''}.")
    if params.get("neighbour_policy"):
        lines.append(f"The noisy neighbour runs under its own policy, {_policy_text(params['neighbour_policy'])} "
                     "per tenant: the one the live load test provisions.")
    if live is not None:
        lp = live.parameters
        parts = [f"{k.replace('_', ' ')} {lp[k]}" for k in ("load_points", "duration_s", "workers", "seed", "designs")
                 if lp.get(k) is not None]
        if lp.get("policy"):
            parts.append(f"policy {_policy_text(lp['policy'])}")
        lines.append("Live run: " + ("; ".join(parts) if parts else "no parameters recorded") + ".")
    if not lines:
        lines.append("The runs recorded no workload parameters (run.json is missing or has none).")
    return lines


def _policy_text(policy: dict[str, Any]) -> str:
    return f"{policy['requests']} per {fmt_g(policy['window_s'])} s"


def _setup_mismatch(sim: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """Sentences for each way the live noisy neighbour differs from the simulated one (policy, duration)."""
    out = []
    sim_policy = sim.get("neighbour_policy") or sim.get("policy") or {}
    live_policy = live.get("policy") or {}
    if sim_policy and live_policy and (sim_policy.get("requests"), float(sim_policy.get("window_s", 0))) != (
            live_policy.get("requests"), float(live_policy.get("window_s", 0))):
        out.append(f"The live run's policy ({_policy_text(live_policy)}) differs from the simulated noisy "
                   f"neighbour's ({_policy_text(sim_policy)}), so their 429 rates are not like for like.")
    sim_s = (sim.get("durations_s") or {}).get("neighbour")
    live_s = live.get("duration_s")
    if sim_s is not None and live_s is not None and float(sim_s) != float(live_s):
        out.append(f"The live runs lasted {fmt_g(live_s)} s and the simulated noisy neighbour {fmt_g(sim_s)} s: a bucket's "
                   "initial burst weighs more in the shorter one, so their 429 rates differ for that reason too.")
    return out


def _live_race_sentence(live: RunData) -> str | None:
    """The live race (run.json `race`): what each algorithm admitted of simultaneous requests."""
    race = live.parameters.get("race") or {}
    results = race.get("results") or {}
    limit = (race.get("policy") or {}).get("requests")
    if not results or limit is None:
        return None
    workers = live.parameters.get("workers")
    across = f" across {workers} service workers" if workers else ""
    exact = [d for d, r in results.items() if r.get("admitted") == limit and r.get("no_over_admission")]
    parts = []
    if exact:
        parts.append(f"{fmt_list(_order(exact))} admitted exactly {limit}")
    for d in _order(set(results) - set(exact)):
        r = results[d]
        held = "held" if r.get("no_over_admission") else "failed"
        parts.append(f"{d} admitted {r.get('admitted')} (no_over_admission {held})")
    return (f"Live, {race.get('requests')} requests of one tenant sent at once{across} at a limit of {limit}: "
            + "; ".join(parts) + ".")


def _live_notes(sim: View | None, live: View) -> list[str]:
    notes = []
    if len(live.load_points) != len(COMPARED_LOAD_POINTS):
        notes.append(f"The live run measured {fmt_loads(live.load_points)}; the comparison asks for "
                     f"{len(COMPARED_LOAD_POINTS)} load points.")
    if sim is not None:
        unsimulated = [lp for lp in live.load_points if lp not in sim.load_points]
        if unsimulated:
            notes.append(f"The simulation has no {fmt_loads(unsimulated)} (it ran {fmt_loads(sim.load_points)}), so those "
                         "rows have no simulated 429 rate.")
    if UNSAFE in live.designs:
        notes.append(f"The simulation's noisy neighbour decides requests one at a time, so its {UNSAFE} rates are "
                     f"fixed_window's; live, {UNSAFE} races across the service workers and may refuse fewer.")
    if sim is not None:
        notes += _setup_mismatch(sim.run.parameters, live.run.parameters)
    for d in live.designs:
        for lp in live.load_points:
            problems = []
            for metric, noun in (("errors", "errors"), ("timeouts", "timeouts"), ("dropped", "dropped arrivals"),
                                 ("undecided", "answers the limiter did not decide")):
                s = live.get(d, lp, metric)
                if s.known and s.mean > 0:
                    problems.append(f"{s.mean:,.0f} {noun}")
            if problems:
                notes.append(f"Live {d} at load {fmt_load(lp)} saw {fmt_list(problems)}.")
    return notes


# --- the builder --------------------------------------------------------------------------------

def build(data: PatternData) -> Report:
    sim = View.of(data.sim) if data.sim and data.sim.rows else None
    live = View.of(data.live) if data.live and data.live.rows else None
    params = data.sim.parameters if data.sim else {}
    invariants, invariants_note = checks_table(data.live, PATTERN)
    notes: list[str] = []
    conclusions: list[str] = []
    tables: list[Table] = []
    figures: list[Figure] = []

    if sim is None:
        conclusions.append(f"There is no simulation, so accuracy, memory, boundary, skew and race results are "
                           f"missing and the measured 429 rates stand alone: run `saaslab sim {PATTERN}`.")
        designs = live.designs if live else []
    else:
        designs = sim.designs
        if sim.max_seeds < MIN_SEEDS:
            notes.append(f"The simulation used {sim.max_seeds} seed(s); conclusions need at least {MIN_SEEDS} "
                         f"(`saaslab sim {PATTERN} --seeds {MIN_SEEDS}`), so the intervals are wide or missing.")
        conclusions.append(_headline(sim))
        sentences = (_accuracy_sentence(sim), _separation_sentence(sim), _over_under_sentence(sim),
                     _boundary_sentence(sim), _memory_sentence(sim), _neighbour_sentence(sim), _race_sentence(sim),
                     _skew_sentence(sim), _naive_sentence(sim))
        conclusions += [s for s in sentences if s]
        tables = [_accuracy_table(sim), _boundary_memory_table(sim), _neighbour_table(sim), _concurrency_table(sim)]
        figures = [_accuracy_figure(sim), _boundary_figure(sim), _memory_figure(sim), _race_skew_figure(sim)]

    comps = _comparisons(sim, live) if (sim or live) else []
    sim_vs_live = _sim_vs_live_table(comps, sim is not None) if comps else None
    if live is None:
        sim_vs_live_note = (f"No live run yet: run `saaslab load {PATTERN}`, then `saaslab report {PATTERN}`; the "
                            "measured columns fill in from its rows.")
        conclusions.append(sim_vs_live_note)
    else:
        notes += _live_notes(sim, live)
        sim_vs_live_note = ("One row per algorithm, load point and tenant group the live run measured. A live run "
                            "has one seed per cell, so its values carry no interval.")
        if sim is not None:
            conclusions += _agreement_sentences(comps)
            same_seed = _same_seed_sentence(sim, live, comps)
            if same_seed:
                conclusions.append(same_seed)
            figures.append(_live_figure(comps))
    race = _live_race_sentence(data.live) if data.live else None
    if race:
        conclusions.append(race)
    checks = checks_sentence(data.live)
    if checks:
        conclusions.append(checks)

    return Report(pattern=PATTERN, question=QUESTION, designs=_designs(params, designs),
                  workload=_workload(data.sim, data.live), conclusions=conclusions, tables=tables, figures=figures,
                  invariants=invariants, invariants_note=invariants_note, sim_vs_live=sim_vs_live,
                  sim_vs_live_note=sim_vs_live_note, notes=notes)

