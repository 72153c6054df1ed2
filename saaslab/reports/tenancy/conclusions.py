"""The tenancy report's conclusions from one source: the winner, each load point, separation, who pays."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from saaslab.report import fmt_g, fmt_list, fmt_load, fmt_loads, fmt_num
from saaslab.reports.tenancy.view import NEAR_SOLO, View, ci_words, ms_words, x_words

# --- conclusions ----------------------------------------------------------------------------------

def load_sentence(v: View, lp: float) -> str:
    ranked = v.ranking(lp)
    if not ranked:
        return (f"At load {fmt_load(lp)} the quiet tenants' p99 relative to solo could not be computed "
                "(no completed quiet requests in the burst or the solo run).")
    (best, b), (worst, w) = ranked[0], ranked[-1]
    if len(ranked) == 1:
        return f"At load {fmt_load(lp)} only {best} has a result: quiet p99 at {x_words(b)} solo {ci_words(b)}."
    if b.mean <= NEAR_SOLO:
        return (f"At load {fmt_load(lp)}, {best} kept quiet tenants' p99 at {x_words(b)} their solo p99 {ci_words(b)} "
                f"while {worst} let it rise to {x_words(w)} {ci_words(w)}.")
    return (f"At load {fmt_load(lp)} no design kept quiet tenants within {NEAR_SOLO:g}x of their solo p99: the best, {best}, "
            f"still reached {x_words(b)} {ci_words(b)} and {worst} reached {x_words(w)} {ci_words(w)}.")


def winner_sentence(v: View) -> str:
    best_at: dict[str, list[float]] = defaultdict(list)
    for lp in v.load_points:
        ranked = v.ranking(lp)
        if ranked:
            best_at[ranked[0][0]].append(lp)
    if not best_at:
        return ("No design's quiet-tenant p99 relative to solo could be computed, so the question stays "
                "unanswered by this data.")
    if len(best_at) == 1:
        winner, lps = next(iter(best_at.items()))
        ratios = [v.get(winner, lp, "quiet_p99_vs_solo").mean for lp in lps]
        span = (f"{fmt_num(min(ratios))}x" if len(ratios) == 1
                else f"between {fmt_num(min(ratios))}x and {fmt_num(max(ratios))}x")
        where = f"at every load point tested ({fmt_list([fmt_load(lp) for lp in lps])})"
        if len(lps) < len(v.load_points):
            where = f"at every load point with a result ({fmt_list([fmt_load(lp) for lp in lps])})"
        worst = max(((d, lp, v.get(d, lp, "quiet_p99_vs_solo")) for lp in v.load_points for d in v.designs
                     if d != winner and v.get(d, lp, "quiet_p99_vs_solo").known), key=lambda x: x[2].mean,
                    default=None)
        contrast = (f", against up to {x_words(worst[2])} under {worst[0]} (at load {fmt_load(worst[1])})"
                    if worst else "")
        return (f"{winner} kept the quiet tenants closest to their solo latency {where}: their p99 "
                f"stayed {span} of solo{contrast}.")
    parts = [f"{d} at {fmt_loads(lps)}" for d, lps in best_at.items()]
    return f"No single design kept quiet tenants closest to solo everywhere: the best was {fmt_list(parts)}."


def separation_sentence(v: View) -> str | None:
    """Whether the best design's lead over the runner-up is larger than the confidence intervals."""
    clear, unclear, no_ci = [], [], []
    for lp in v.load_points:
        ranked = v.ranking(lp)
        if len(ranked) < 2:
            continue
        (d1, s1), (d2, s2) = ranked[0], ranked[1]
        if math.isnan(s1.ci95) or math.isnan(s2.ci95):
            no_ci.append(lp)
        elif s1.high < s2.low:
            clear.append((lp, d1, d2))
        else:
            unclear.append((lp, d1, s1, d2, s2))
    if no_ci and not clear and not unclear:
        return ("With a single seed per design there are no confidence intervals, so these rankings are "
                "one sample each.")
    sentences = []
    if clear:
        runner_ups = {d2 for _, _, d2 in clear}
        sentences.append(f"At {fmt_loads([lp for lp, _, _ in clear])} the best design's lead over "
                         f"the runner-up ({fmt_list(sorted(runner_ups))}) is larger than the 95% CIs.")
    for lp, d1, s1, d2, s2 in unclear:
        sentences.append(f"At load {fmt_load(lp)} {d1} ({x_words(s1)} ±{fmt_num(s1.ci95)}) and {d2} ({x_words(s2)} "
                         f"±{fmt_num(s2.ci95)}) overlap within their 95% CIs, so this data cannot separate them.")
    return " ".join(sentences) or None


def cost_sentence(v: View, lp: float) -> str | None:
    """Who pays for the burst under the best design, compared with the worst."""
    ranked = v.ranking(lp)
    if len(ranked) < 2:
        return None
    best, worst = ranked[0][0], ranked[-1][0]
    nb, nw = v.get(best, lp, "noisy_p99"), v.get(worst, lp, "noisy_p99")
    qb, qw = v.get(best, lp, "quiet_p99"), v.get(worst, lp, "quiet_p99")
    if not (nb.known and nw.known and qb.known and qw.known):
        return None
    tail = (f"at load {fmt_load(lp)} the noisy tenant's p99 was {ms_words(nb)} under {best} against {ms_words(nw)} "
            f"under {worst}, while the quiet tenants' p99 was {ms_words(qb)} against {ms_words(qw)}.")
    if nb.mean > nw.mean:
        return f"{best} moves the burst's cost onto the tenant that caused it: {tail}"
    return f"{best} protected the quiet tenants without slowing the noisy one further: {tail}"


def goodput_sentence(v: View, lp: float, slo_ms: Any) -> str | None:
    ranked = v.ranking(lp, "goodput")
    if len(ranked) < 2:
        return None
    (low_d, low), (high_d, high) = ranked[0], ranked[-1]
    slo = f"within {fmt_g(slo_ms)} ms" if isinstance(slo_ms, int | float) else "within the SLO"
    return (f"At load {fmt_load(lp)} total goodput (requests completed {slo} per second) was {fmt_num(high.mean)} rps "
            f"under {high_d} and {fmt_num(low.mean)} rps under {low_d}.")


def jain_sentence(v: View, lp: float) -> str | None:
    ranked = v.ranking(lp, "jain_index")
    if len(ranked) < 2:
        return None
    (low_d, low), (high_d, high) = ranked[0], ranked[-1]
    return (f"Jain's fairness index over each tenant's share of requests served within the SLO was "
            f"{fmt_num(high.mean)} under {high_d} and {fmt_num(low.mean)} under {low_d} at load {fmt_load(lp)}: "
            f"{high_d} spread the burst's cost more evenly over all tenants, {low_d} concentrated it on fewer.")
