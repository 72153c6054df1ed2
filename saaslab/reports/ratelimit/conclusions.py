"""The rate-limiting report's conclusions on accuracy, memory, the window boundary and the noisy neighbour,
and the headline that answers the question."""

from __future__ import annotations

import math
from functools import partial

from saaslab.report import Summary, fmt_g, fmt_list, fmt_load, fmt_loads, fmt_num
from saaslab.reports.ratelimit.concurrency import clocks, race_verdicts, skew_verdict
from saaslab.reports.ratelimit.view import (
    View,
    bytes_words,
    error,
    error_seeds,
    groups_of,
    over_loads,
    pct_words,
    sim_rejected_pct,
    span,
)

# --- conclusions ----------------------------------------------------------------------------------

def accuracy_ranking(v: View) -> list[tuple[str, Summary]]:
    """The atomic designs by admission error averaged over the load points, smallest first.

    Admitted-versus-exact ranks them rather than false decisions: under heavy overload every arrival
    meets whatever room a cautious limiter leaves unused, so false rejects grow with load even for a
    limiter whose throughput is close to exact (the scenario's docstring says so too).
    """
    ranked = []
    for d in v.strict:
        score = over_loads(v, partial(error_seeds, v, d))
        if score is not None:
            ranked.append((d, score))
    return sorted(ranked, key=lambda ds: ds[1].mean)


def memory(v: View, design: str) -> Summary:
    return v.get(design, v.top_load, "memory_state_bytes_mean")


def headline(v: View) -> str:
    parts = []
    ranked = accuracy_ranking(v)
    if ranked:
        def described(d: str, s: Summary) -> str:
            mem = memory(v, d)
            cost = f", {bytes_words(mem.mean)} per tenant" if mem.known else ""
            return f"{d} ({fmt_num(s.mean)}% off an exact sliding window's admissions{cost})"

        best, b = ranked[0]
        head = f"Of the atomic algorithms, {described(best, b)} kept a tenant closest to its quota"
        if len(ranked) > 1:
            head += f", {described(*ranked[1])} came next"
        cheap = min(((d, m) for d, _ in ranked if (m := memory(v, d)).known), key=lambda dm: dm[1].mean,
                    default=None)
        if cheap and cheap[0] not in [d for d, _ in ranked[:2]]:
            head += f" and the cheapest was {described(cheap[0], dict(ranked)[cheap[0]])}"
        parts.append(head)
    held, worst = race_verdicts(v)
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
    skew = skew_verdict(v)
    if skew.atomic_broken:
        parts.append(f"with app clocks {clocks(v)}, {fmt_list(skew.atomic_broken)} admitted more in one window "
                     "than they promise")
    elif skew.kept:
        parts.append(f"app clocks {clocks(v)} pushed no atomic algorithm past its promise")
    if not parts:
        return "The simulated rows hold none of the accuracy, race or skew metrics, so the question stays open."
    return "; ".join(parts) + "."


def accuracy_sentence(v: View) -> str | None:
    ranked = accuracy_ranking(v)
    if len(ranked) < 2:
        return None
    lines = []
    for d, s in ranked:
        fa = over_loads(v, partial(v.run_seeds, d, "accuracy_false_admit_pct"))
        fr = over_loads(v, partial(v.run_seeds, d, "accuracy_false_reject_pct"))
        wrong = f" ({pct_words(fa)} false admits, {pct_words(fr)} false rejects)" if fa and fr else ""
        lines.append(f"{d} {s.text('%')}{wrong}")
    return (f"Admission error (how far the admitted count is from an exact sliding window's, averaged over "
            f"{fmt_loads(v.load_points)}; mean ± 95% CI over seeds), with the decisions each got wrong: "
            + "; ".join(lines) + ". False rejects grow with overload for a cautious limiter, so read them beside "
            "the error.")


def separation_sentence(v: View) -> str | None:
    """Whether the most accurate design's lead over the runner-up is larger than the 95% CIs, per load."""
    clear, overlap = [], []
    for lp in v.load_points:
        ranked = sorted(((d, s) for d in v.strict if (s := error(v, d, lp)).known), key=lambda ds: ds[1].mean)
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


def over_under_sentence(v: View) -> str | None:
    lp = v.top_load
    items = [(d, s.mean) for d in v.strict if (s := v.get(d, lp, "accuracy_admitted_vs_exact_pct")).known]
    if len(items) < 2:
        return None
    groups = sorted(groups_of(items), key=lambda g: -g[1])
    listed = [f"{fmt_list(ds)} {fmt_num(x)}%" for ds, x in groups]
    return (f"At load {fmt_load(lp)} the algorithms admitted, of what an exact sliding window admits of the same "
            f"arrivals: {', '.join(listed)} (above 100% lets the tenant past its quota).")


def boundary_sentence(v: View) -> str | None:
    lp = v.top_load
    items = [(d, s.mean) for d in v.designs if (s := v.get(d, lp, "boundary_burst_ratio")).known]
    if len(items) < 2:
        return None
    groups = groups_of(items)
    (low_d, low), (high_d, high) = groups[0], groups[-1]
    spread = v.run.parameters.get("boundary_spread")
    where = f"within ±{fmt_g(100 * spread)}% of a window around its boundary" if spread else "around a window boundary"
    text = (f"A flood of {fmt_g(lp)}x the limit {where} got {fmt_list(high_d)} to admit {fmt_num(high)}x the limit, "
            f"{fmt_list(low_d)} {fmt_num(low)}x")
    middle = [x for _, x in groups[1:-1]]
    if middle:
        text += f", the others {span(middle, lambda x: f'{fmt_num(x)}x')}"
    return text + "."


def memory_sentence(v: View) -> str | None:
    ranked = sorted(((d, s.mean) for d in v.designs if (s := memory(v, d)).known), key=lambda dx: dx[1])
    if len(ranked) < 2:
        return None
    text = (f"Redis state per tenant (mean at load {fmt_load(v.top_load)}): "
            + ", ".join(f"{d} {bytes_words(x)}" for d, x in ranked)
            + f"; the largest is {fmt_num(ranked[-1][1] / ranked[0][1])}x the smallest")
    first = v.load_points[0]
    growing = [(d, low.mean) for d, top in ranked
               if (low := v.get(d, first, "memory_state_bytes_mean")).known and top > 1.1 * low.mean]
    if growing and first != v.top_load:
        text += (f". It grows with the requests admitted for {fmt_list([d for d, _ in growing])} ("
                 + ", ".join(f"{bytes_words(x)} at load {fmt_load(first)}" for _, x in growing)
                 + "); the others' stays constant")
    return text + "."


def neighbour_sentence(v: View) -> str | None:
    quiet = [(d, lp, s) for d in v.designs for lp in v.load_points
             if (s := sim_rejected_pct(v, d, lp, "quiet")).known]
    noisy = [s.mean for d in v.designs if (s := sim_rejected_pct(v, d, v.top_load, "noisy")).known]
    if not quiet or not noisy:
        return None
    worst_d, worst_lp, worst = max(quiet, key=lambda x: x[2].mean)
    admitted = [s.mean for d in v.designs if (s := v.get(d, v.top_load, "neighbour_noisy_admitted_x_quota")).known]
    noisy_text = (f"the noisy tenant at {fmt_load(v.top_load)}x its quota was refused "
                  f"{span(noisy, lambda x: f'{fmt_num(x)}%')} of its requests")
    if admitted:
        noisy_text += f" and still got {span(admitted, lambda x: f'{fmt_num(x)}x')} its quota through"
    if worst.mean == 0:
        return (f"Limits are per tenant: under every algorithm and load the quiet tenants were never refused, "
                f"while {noisy_text}.")
    return (f"The quiet tenants were refused up to {pct_words(worst)} of their requests ({worst_d} at load "
            f"{fmt_load(worst_lp)}), while {noisy_text}.")
