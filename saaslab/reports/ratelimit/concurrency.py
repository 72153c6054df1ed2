"""The rate-limiting report's concurrency and clock-skew findings: the race, skewed app clocks, naive."""

from __future__ import annotations

from dataclasses import dataclass

from saaslab.report import Summary, fmt_g, fmt_list, fmt_load, fmt_loads, fmt_num
from saaslab.reports.ratelimit.view import (
    DEFAULT_PROMISE,
    PROMISED_WINDOW_RATIO,
    SAME_VALUE,
    UNSAFE,
    View,
    pct_words,
    wrong,
    x_words,
)
from saaslab.results import ALL_TENANTS


def race_verdicts(v: View) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[float, float]]]:
    """Per design: (runs where no_over_admission held, runs) and (worst admitted/limit, its load)."""
    held: dict[str, tuple[int, int]] = {}
    worst: dict[str, tuple[float, float]] = {}
    for d in v.designs:
        runs = [x for lp in v.load_points for x in v.seeds(d, lp, "race_no_over_admission", ALL_TENANTS).values()]
        if runs:
            held[d] = (sum(1 for x in runs if x >= 0.5), len(runs))
        ratios = [(s.mean, lp) for lp in v.load_points if (s := v.get(d, lp, "race_admitted_ratio")).known]
        if ratios:
            worst[d] = max(ratios)
    return held, worst


def promise(design: str) -> float:
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


def skew_verdict(v: View) -> SkewVerdict:
    broken, kept = [], []
    for d in v.designs:
        agree, skewed = (v.get(d, v.top_load, f"{p}_max_window_ratio") for p in ("cluster", "skew"))
        if not skewed.known:
            continue
        if skewed.mean > promise(d) + SAME_VALUE:
            broken.append((d, agree, skewed))
        else:
            kept.append(d)
    return SkewVerdict(broken, kept)


def clocks(v: View) -> str:
    skew_ms = v.run.parameters.get("skew_ms")
    return f"±{fmt_g(skew_ms)} ms apart" if skew_ms is not None else "skewed"


def race_sentence(v: View) -> str | None:
    held, worst = race_verdicts(v)
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
            runs = {load: v.seeds(d, load, "race_no_over_admission", ALL_TENANTS) for load in v.load_points}
            failed = [load for load, r in runs.items() if any(x < 0.5 for x in r.values())]
            every = all(x < 0.5 for load in failed for x in runs[load].values())
            out.append(f"{d} failed it in {n - ok} of {n} runs ({'every run' if every else 'runs'} at "
                       f"{fmt_loads(failed)}), admitting up to {fmt_num(ratio)}x the limit (at load {fmt_load(lp)})")
    return f"In the race{how}, " + "; ".join(out) + "."


def skew_sentence(v: View) -> str | None:
    skew = skew_verdict(v)
    if not (skew.broken or skew.kept):
        return None
    lp = v.top_load
    out = []
    atomic = [(d, agree, skewed) for d, agree, skewed in skew.broken if d != UNSAFE]
    if atomic:
        out.append(f"{fmt_list([d for d, _, _ in atomic])} admitted more in one window than they promise: " + "; ".join(
            f"{d} {skewed.text('x')} (promise {fmt_g(promise(d))}x; {x_words(agree)} with agreeing clocks)"
            for d, agree, skewed in atomic))
    if skew.kept:
        out.append(f"{fmt_list(skew.kept)} stayed within {'its' if len(skew.kept) == 1 else 'their'} promise")
    text = f"With app-server clocks {clocks(v)} (load {fmt_load(lp)}, judged in true time), " + ", while ".join(out)
    for d, agree, skewed in skew.broken:
        if d == UNSAFE:
            text += (f". {d} reached {x_words(skewed)} ({x_words(agree)} with agreeing clocks): its race, more than the "
                     "clocks")
    changes = []
    for d in v.strict:
        agree, skewed = wrong(v, d, lp, "cluster"), wrong(v, d, lp, "skew")
        if agree.known and skewed.known:
            changes.append((abs(skewed.mean - agree.mean), d, agree, skewed))
    if changes:
        _, d, agree, skewed = max(changes, key=lambda c: c[0])
        text += (f". Among the atomic algorithms, skew moved wrong decisions most for {d}: {pct_words(agree)} of "
                 f"requests with agreeing clocks, {pct_words(skewed)} with skewed ones")
    return text + "."


def naive_sentence(v: View) -> str | None:
    """The unsafe design is fixed_window one request at a time: say so when the rows show it."""
    if UNSAFE not in v.designs or "fixed_window" not in v.designs or not v.has_metric("accuracy_admitted"):
        return None
    same = all(v.seeds(UNSAFE, lp, m, ALL_TENANTS) == v.seeds("fixed_window", lp, m, ALL_TENANTS)
               for lp in v.load_points for m in ("accuracy_admitted", "boundary_burst_ratio"))
    if not same:
        return None
    return (f"{UNSAFE} admitted exactly what fixed_window admitted whenever requests arrived one at a time "
            "(accuracy and boundary runs): it differs only when requests overlap.")
