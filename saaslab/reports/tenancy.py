"""The tenancy report: which scheduler protects quiet tenants from a noisy neighbour.

Reads the rows of `scenarios/tenancy.py` (simulated) and `saaslab load tenancy` (measured). The
tables and plots come from the simulation when there is one (it has the seeds for confidence
intervals) and from the live run otherwise; the live run is then set beside the simulation for
every (design, load point) it measured. Every conclusion is a sentence filled in from those numbers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

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
    decimals_for,
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
    summarise,
)
from saaslab.results import ALL_TENANTS

PATTERN = "tenancy"
QUESTION = ("When one tenant bursts to 10x its share, which scheduler keeps the other tenants' latency "
            "near what they see alone?")
DESIGN_ORDER = ("fifo", "bulkhead", "wfq")
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
MIN_SEEDS = 5
SEND_LAG_NOTE_MS = 10.0
"""A load generator launching its slowest 1% later than this (it counts in the measured latency) is noted."""

MISSING = Summary(mean=float("nan"), ci95=float("nan"), n=0)


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
        designs = [d for d in DESIGN_ORDER if d in present] + sorted(present - set(DESIGN_ORDER))
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

def _x(s: Summary) -> str:
    return f"{fmt_num(s.mean)}x"


def _ci(s: Summary) -> str:
    """'(95% CI ±0.05, 5 seeds)', or an honest note when there is no interval."""
    if math.isnan(s.ci95):  # a known summary without an interval has exactly one value
        return "(one seed, no CI)"
    return f"(95% CI ±{fmt_num(s.ci95, decimals_for(s.mean))}, {s.n} seeds)"


def _ms(s: Summary) -> str:
    return f"{fmt_num(s.mean)} ms"


# --- conclusions ----------------------------------------------------------------------------------

def _load_sentence(v: View, lp: float) -> str:
    ranked = v.ranking(lp)
    if not ranked:
        return (f"At load {fmt_load(lp)} the quiet tenants' p99 relative to solo could not be computed "
                "(no completed quiet requests in the burst or the solo run).")
    (best, b), (worst, w) = ranked[0], ranked[-1]
    if len(ranked) == 1:
        return f"At load {fmt_load(lp)} only {best} has a result: quiet p99 at {_x(b)} solo {_ci(b)}."
    if b.mean <= NEAR_SOLO:
        return (f"At load {fmt_load(lp)}, {best} kept quiet tenants' p99 at {_x(b)} their solo p99 {_ci(b)} "
                f"while {worst} let it rise to {_x(w)} {_ci(w)}.")
    return (f"At load {fmt_load(lp)} no design kept quiet tenants within {NEAR_SOLO:g}x of their solo p99: the best, {best}, "
            f"still reached {_x(b)} {_ci(b)} and {worst} reached {_x(w)} {_ci(w)}.")


def _winner_sentence(v: View) -> str:
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
        contrast = (f", against up to {_x(worst[2])} under {worst[0]} (at load {fmt_load(worst[1])})"
                    if worst else "")
        return (f"{winner} kept the quiet tenants closest to their solo latency {where}: their p99 "
                f"stayed {span} of solo{contrast}.")
    parts = [f"{d} at {fmt_loads(lps)}" for d, lps in best_at.items()]
    return f"No single design kept quiet tenants closest to solo everywhere: the best was {fmt_list(parts)}."


def _separation_sentence(v: View) -> str | None:
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
        sentences.append(f"At load {fmt_load(lp)} {d1} ({_x(s1)} ±{fmt_num(s1.ci95)}) and {d2} ({_x(s2)} "
                         f"±{fmt_num(s2.ci95)}) overlap within their 95% CIs, so this data cannot separate them.")
    return " ".join(sentences) or None


def _cost_sentence(v: View, lp: float) -> str | None:
    """Who pays for the burst under the best design, compared with the worst."""
    ranked = v.ranking(lp)
    if len(ranked) < 2:
        return None
    best, worst = ranked[0][0], ranked[-1][0]
    nb, nw = v.get(best, lp, "noisy_p99"), v.get(worst, lp, "noisy_p99")
    qb, qw = v.get(best, lp, "quiet_p99"), v.get(worst, lp, "quiet_p99")
    if not (nb.known and nw.known and qb.known and qw.known):
        return None
    tail = (f"at load {fmt_load(lp)} the noisy tenant's p99 was {_ms(nb)} under {best} against {_ms(nw)} "
            f"under {worst}, while the quiet tenants' p99 was {_ms(qb)} against {_ms(qw)}.")
    if nb.mean > nw.mean:
        return f"{best} moves the burst's cost onto the tenant that caused it: {tail}"
    return f"{best} protected the quiet tenants without slowing the noisy one further: {tail}"


def _goodput_sentence(v: View, lp: float, slo_ms: Any) -> str | None:
    ranked = v.ranking(lp, "goodput")
    if len(ranked) < 2:
        return None
    (low_d, low), (high_d, high) = ranked[0], ranked[-1]
    slo = f"within {fmt_g(slo_ms)} ms" if isinstance(slo_ms, int | float) else "within the SLO"
    return (f"At load {fmt_load(lp)} total goodput (requests completed {slo} per second) was {fmt_num(high.mean)} rps "
            f"under {high_d} and {fmt_num(low.mean)} rps under {low_d}.")


def _jain_sentence(v: View, lp: float) -> str | None:
    ranked = v.ranking(lp, "jain_index")
    if len(ranked) < 2:
        return None
    (low_d, low), (high_d, high) = ranked[0], ranked[-1]
    return (f"Jain's fairness index over each tenant's share of requests served within the SLO was "
            f"{fmt_num(high.mean)} under {high_d} and {fmt_num(low.mean)} under {low_d} at load {fmt_load(lp)}: "
            f"{high_d} spread the burst's cost more evenly over all tenants, {low_d} concentrated it on fewer.")


@dataclass
class Comparison:
    design: str
    load_point: float
    metric: str
    sim: Summary
    live: Summary

    @property
    def gap(self) -> float:
        return gap_percent(self.sim.mean, self.live.mean)


def _comparisons(sim: View, live: View) -> list[Comparison]:
    return [Comparison(d, lp, m, sim.get(d, lp, m), live.get(d, lp, m))
            for lp in live.load_points for d in live.designs if live.seeds.get((d, lp))
            for m, _ in COMPARED_METRICS]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _spread(values: list[float]) -> str:
    """'22.4 ms' or '22.4 ms (22.1 to 22.8 ms over 3 runs)'."""
    if len(values) == 1:
        return f"{fmt_num(values[0])} ms"
    return f"{fmt_num(_mean(values))} ms ({fmt_num(min(values))} to {fmt_num(max(values))} ms over {len(values)} runs)"


def _range(values: list[float]) -> str:
    """'3.2 ms' or '3.2 to 5.9 ms'."""
    low, high = min(values), max(values)
    return f"{fmt_num(low)} ms" if len(values) == 1 or low == high else f"{fmt_num(low)} to {fmt_num(high)} ms"


def _calibration_sentence(sim_params: dict[str, Any], live: View) -> str | None:
    """The simulation's assumed slot hold and outside-slot latency beside what the live gate measured."""
    def measured(metric: str) -> list[float]:
        return [s.mean for (_, _, m), s in live.per_run.items() if m == metric and s.known]

    hold, solo_hold = measured("slot_hold_ms"), measured("solo_slot_hold_ms")
    if not hold:
        return None
    hold_sd, solo_sd, overhead = measured("slot_hold_sd_ms"), measured("solo_slot_hold_sd_ms"), measured(
        "service_overhead_ms")
    outside, solo_outside = measured("outside_slot_ms"), measured("solo_outside_slot_ms")
    assumed, assumed_sd, assumed_out = (sim_params.get(k) for k in ("slot_hold_ms", "slot_hold_sd_ms",
                                                                     "outside_slot_ms"))
    sentences = []
    if assumed is not None:
        sd = f" (standard deviation {fmt_g(assumed_sd)} ms)" if assumed_sd is not None else ""
        out = f" and spends {fmt_g(assumed_out)} ms outside it" if assumed_out is not None else ""
        sentences.append(f"Calibration: the simulation assumes a request holds its slot for {fmt_g(assumed)} ms on "
                         f"average{sd}{out}.")
    else:
        sentences.append("Calibration: the simulation recorded no assumed slot hold.")
    details = []
    if assumed is not None:
        details.append(f"{fmt_gap(gap_percent(float(assumed), _mean(hold)))} against the assumption")
    if overhead:
        details.append(f"{fmt_num(_mean(overhead))} ms over the injected delay")
    if hold_sd:
        details.append(f"standard deviation {_range(hold_sd)}")
    burst = f"{_spread(hold)} during the bursts" + (f" ({'; '.join(details)})" if details else "")
    solo = ""
    if solo_hold:
        solo = f" and {_spread(solo_hold)} in the solo runs" + (
            f" (standard deviation {_range(solo_sd)})" if solo_sd else "")
    sentences.append(f"The live service's gate measured a mean hold of {burst}{solo}.")
    if not (outside and solo_outside):
        return " ".join(sentences)
    sentences.append(f"Outside the slot the live requests spent {_spread(solo_outside)} in the solo runs and "
                     f"{_spread(outside)} during the bursts.")
    effects = []
    extra = _mean(outside) - _mean(solo_outside)
    if assumed_out is not None and extra > max(1.0, 0.25 * float(assumed_out)):
        effects.append(f"slower outside the slot (about {fmt_num(extra)} ms more per request, where the simulation "
                       f"keeps {fmt_g(assumed_out)} ms)")
    if assumed_sd is not None and hold_sd and max(hold_sd) > 1.5 * float(assumed_sd):
        effects.append(f"more variable inside it (hold standard deviation up to {fmt_num(max(hold_sd))} ms against "
                       f"the simulation's {fmt_g(assumed_sd)} ms)")
    if effects:
        sentences.append(f"So under the burst the live service is {' and '.join(effects)}: work that shares the "
                         "service's cores (HTTP on both sides, the auth middleware and its Redis round trip, the "
                         "load generator) and that no scheduler orders, which the simulation's fixed parameters "
                         "leave out.")
    return " ".join(sentences)


def _same_seed_sentence(sim: View, live: View) -> str | None:
    """The simulation on the live run's own schedule: the like-for-like reading of the comparison."""
    seeds = {r.seed for r in live.run.rows}
    if len(seeds) != 1:
        return None
    seed = seeds.pop()
    simulated = {(r.design, load_key(r.load_point)): r.value
                 for r in sim.run.select(tenant=ALL_TENANTS, metric="quiet_p99_vs_solo") if r.seed == seed}
    by_load: dict[float, list[str]] = defaultdict(list)
    for c in _comparisons(sim, live):
        value = simulated.get((c.design, load_key(c.load_point)))
        if c.metric == "quiet_p99_vs_solo" and c.live.known and value is not None:
            by_load[c.load_point].append(f"{c.design} {fmt_num(value)}x (measured {_x(c.live)})")
    if not by_load:
        return None
    parts = [f"{fmt_list(items)} at load {fmt_load(lp)}" for lp, items in by_load.items()]
    return (f"On the live run's own arrival schedule (seed {seed}) the simulation gives quiet p99 / solo of "
            f"{'; '.join(parts)}.")


def _baseline_sentence(sim: View, live: View) -> str | None:
    """How close the two sources are where there is no burst, and for the tenant that bursts."""
    parts = []
    for metric, label in (("solo_quiet_p99", "the quiet tenants' solo p99"), ("noisy_p99", "the noisy tenant's p99")):
        gaps = [gap_percent(sim.get(d, lp, metric).mean, live.get(d, lp, metric).mean)
                for lp in live.load_points for d in live.designs if live.seeds.get((d, lp))]
        gaps = [g for g in gaps if not math.isnan(g)]
        if gaps:
            parts.append(f"{label} within {max(abs(g) for g in gaps):.0f}%")
    if not parts:
        return None
    return f"Over the same (design, load) pairs the two sources put {fmt_list(parts)}."


def _agreement_sentences(sim: View, live: View) -> list[str]:
    comps = [c for c in _comparisons(sim, live) if not math.isnan(c.gap)]
    if not comps:
        return ["The live run shares no (design, load point) with a known simulated value, so the two "
                "cannot be compared."]
    out = []
    ratio = [c for c in comps if c.metric == "quiet_p99_vs_solo"]
    if ratio:
        worst = max(ratio, key=lambda c: abs(c.gap))
        within = sum(abs(c.gap) <= AGREEMENT_PCT for c in ratio)
        if abs(worst.gap) <= AGREEMENT_PCT:
            out.append(f"Simulation and measurement agree within {abs(worst.gap):.0f}% on quiet p99 vs solo for "
                       f"all {len(ratio)} (design, load) pairs measured.")
        else:
            out.append(f"Simulation and measurement differ by up to {abs(worst.gap):.0f}% on quiet p99 vs solo "
                       f"(largest: {worst.design} at load {fmt_load(worst.load_point)}, simulated {_x(worst.sim)}, "
                       f"measured {_x(worst.live)}); {within} of {len(ratio)} pairs {'is' if within == 1 else 'are'} "
                       f"within {AGREEMENT_PCT:.0f}%.")
    within_all = sum(abs(c.gap) <= AGREEMENT_PCT for c in comps)
    out.append(f"Over quiet p99 vs solo, quiet p99 and Jain index together, {within_all} of {len(comps)} "
               f"simulated-versus-measured comparisons are within {AGREEMENT_PCT:.0f}%.")
    same, differ = [], []
    for lp in live.load_points:
        live_order = [d for d, _ in live.ranking(lp)]
        sim_order = [d for d, _ in sim.ranking(lp) if d in live_order]
        if len(live_order) < 2 or len(sim_order) != len(live_order):
            continue
        (same if live_order == sim_order else differ).append((lp, sim_order, live_order))
    if same:
        out.append(f"The measured run ranks the designs as the simulation does at "
                   f"{fmt_loads([lp for lp, _, _ in same])} (best first: "
                   f"{'; '.join(', '.join(order) for _, order, _ in same)}).")
    for lp, sim_order, live_order in differ:
        out.append(f"At load {fmt_load(lp)} the measured run ranks the designs {', '.join(live_order)} (best first) "
                   f"but the simulation ranks them {', '.join(sim_order)}.")
    return out


# --- tables and figures -------------------------------------------------------------------------

def _result_tables(v: View) -> list[Table]:
    source = "simulated" if v.run.source == "sim" else "measured"
    tables = []
    for lp in v.load_points:
        rows = []
        for d in v.designs:
            if not v.seeds.get((d, lp)):
                continue
            cells = [v.get(d, lp, m).text("x" if m == "quiet_p99_vs_solo" else "") for m, _ in RESULT_METRICS]
            rows.append([d, *cells, str(v.seeds[(d, lp)])])
        tables.append(Table(f"Load {fmt_load(lp)} of capacity ({source})",
                            ["design", *(label for _, label in RESULT_METRICS), "seeds"], rows,
                            caption="Mean ± half-width of the 95% confidence interval over seeds (Student's t)."))
    return tables


def _use_log_scale(ax: Any, values: list[float]) -> None:
    positive = [x for x in values if x > 0 and not math.isnan(x)]
    if positive and max(positive) / min(positive) > 20:
        ax.set_yscale("log")


def _ratio_figure(primary: View, live: View | None) -> Figure:
    """Quiet p99 / solo by load point and design; `live`, when given, is drawn over the bars."""
    fig = MplFigure(figsize=(8, 4.2), layout="constrained")
    ax = fig.add_subplot()
    series = {d: [primary.get(d, lp, "quiet_p99_vs_solo") for lp in primary.load_points] for d in primary.designs}
    x = grouped_bars(ax, [fmt_load(lp) for lp in primary.load_points], series)
    values = [s.mean for ss in series.values() for s in ss if s.known]
    if live is not None:
        width = 0.8 / max(1, len(primary.designs))
        label = "measured (live)"
        for i, d in enumerate(primary.designs):
            for j, lp in enumerate(primary.load_points):
                s = live.get(d, lp, "quiet_p99_vs_solo")
                if s.known:
                    ax.plot(x[j] - 0.4 + width * (i + 0.5), s.mean, "kD", markersize=6, label=label)
                    values.append(s.mean)
                    label = "_nolegend_"
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="solo (1x)")
    _use_log_scale(ax, [*values, 1.0])
    ax.set_xlabel("offered load before the burst (fraction of capacity)")
    ax.set_ylabel("quiet tenants' p99 / solo p99")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    source = "simulated" if primary.run.source == "sim" else "measured"
    caption = (f"Bars: {source} mean over seeds with 95% CI error bars; 1x means the burst did not hurt the "
               "quiet tenants at all.")
    if live is not None:
        caption += " Diamonds: the live run."
    return Figure("Quiet tenants' p99 relative to solo", figure_data_uri(fig), caption)


def _tenant_figure(v: View, lp: float) -> Figure:
    tenants = sorted({t for (_, load, t) in v.tenant_p99 if load == load_key(lp)}, key=lambda t: (t != NOISY, t))
    fig = MplFigure(figsize=(8, 4.2), layout="constrained")
    ax = fig.add_subplot()
    series = {d: [v.tenant_p99.get((d, load_key(lp), t), MISSING) for t in tenants] for d in v.designs}
    grouped_bars(ax, tenants, series)
    _use_log_scale(ax, [s.mean for ss in series.values() for s in ss if s.known])
    ax.set_ylabel("p99 latency (ms)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return Figure(f"Per-tenant p99 at load {fmt_load(lp)}", figure_data_uri(fig),
                  "Mean over seeds with 95% CI error bars. The noisy tenant bursts; the four quiet ones do not.")


def _sim_vs_live_table(sim: View, live: View) -> Table:
    rows = [[c.design, fmt_load(c.load_point), LABELS[c.metric],
             c.sim.text("x" if c.metric == "quiet_p99_vs_solo" else ""),
             c.live.text("x" if c.metric == "quiet_p99_vs_solo" else ""), fmt_gap(c.gap)]
            for c in _comparisons(sim, live)]
    return Table("Noisy neighbour: simulated versus measured",
                 ["design", "load", "metric", "simulated (mean ± 95% CI)", "measured", "gap"], rows,
                 caption="gap = (measured − simulated) / simulated.")


# --- text about the setup -----------------------------------------------------------------------

def _designs(params: dict[str, Any], present: list[str]) -> dict[str, str]:
    slots = params.get("workload", {}).get("slots")
    per_tenant = params.get("bulkhead_per_tenant")
    weights = params.get("plan_weights")
    of_slots = f" of the {slots} slots" if slots else " of the slots"
    cap = f"at most {per_tenant}{of_slots}" if per_tenant else f"a fixed cap{of_slots}"
    known = {
        "fifo": "Pooled FIFO: one queue for all tenants; whoever arrived first gets the next free slot.",
        "bulkhead": f"Bulkheads: FIFO, but one tenant may hold {cap} at once.",
        "wfq": ("Weighted fair queuing (start-time fair queuing): the next slot goes to the queued request with "
                "the smallest virtual start tag, so a tenant that floods only pushes its own requests back"
                + (f"; plan weights {', '.join(f'{k} {w}' for k, w in weights.items())}." if weights else ".")),
    }
    return {d: known.get(d, "(no description)") for d in present}


def _workload(sim: RunData | None, live: RunData | None) -> list[str]:
    params = (sim or live).parameters if (sim or live) else {}
    wl = params.get("workload") or {}
    lines = []
    tenants = params.get("tenants")
    if tenants:
        lines.append(f"{len(tenants)} tenants with equal base rates ({', '.join(map(str, tenants))}), "
                     "Poisson arrivals.")
    slots, service_ms = wl.get("slots"), wl.get("service_ms")
    if slots and service_ms:
        lines.append(_server_line(params, slots, service_ms))
    if params.get("load_points"):
        lines.append("Load points (offered load before the burst, fraction of capacity): "
                     f"{', '.join(fmt_load(float(lp)) for lp in params['load_points'])}.")
    if wl.get("burst_multiplier"):
        span = ""
        if wl.get("burst_start_s") is not None and wl.get("burst_length_s") is not None:
            span = f" from t={fmt_g(wl['burst_start_s'])} s for {fmt_g(wl['burst_length_s'])} s"
        of = f" of a {fmt_g(params['duration_s'])} s run" if params.get("duration_s") else ""
        solo = _solo_s(params)
        baseline = (f"the first {fmt_g(solo)} s of the same traffic (same seed) without the burst" if solo
                    else "the same traffic (same seed) without the burst")
        lines.append(f"Burst: {NOISY} sends {fmt_g(wl['burst_multiplier'])}x its rate{span}{of}. The solo "
                     f"baseline is {baseline}.")
    if params.get("slo_ms"):
        lines.append(f"Goodput counts requests completed within {fmt_g(params['slo_ms'])} ms.")
    if params.get("seeds") is not None:
        lines.append(f"Simulation seeds: {len(params['seeds'])}.")
    if not lines:
        lines.append("The run recorded no workload parameters (run.json is missing or has none).")
    if live is not None and sim is not None:
        lines.append(_live_line(live.parameters))
    return lines


def _server_line(params: dict[str, Any], slots: Any, service_ms: Any) -> str:
    nominal = slots * 1000.0 / service_ms
    hold, overhead, outside = (params.get(k) for k in ("slot_hold_ms", "slot_overhead_ms", "outside_slot_ms"))
    if not hold:
        return (f"Server: {slots} slots, each request holds one for {fmt_g(service_ms)} ms; capacity "
                f"{fmt_g(nominal)} requests/s.")
    return (f"Server: {slots} slots; each request holds one for {fmt_g(service_ms)} ms plus an exponential "
            f"overhead of mean {fmt_g(overhead or 0)} ms ({fmt_g(hold)} ms on average, calibrated from the live "
            f"service's measured slot hold), and spends a further {fmt_g(outside or 0)} ms outside any slot. Load "
            f"points are fractions of the nominal capacity {fmt_g(nominal)} requests/s ({slots} slots / "
            f"{fmt_g(service_ms)} ms); with the {fmt_g(hold)} ms hold the real capacity is "
            f"{fmt_num(slots * 1000.0 / hold)} requests/s.")


def _solo_s(params: dict[str, Any]) -> float | None:
    solo = (params.get("solo_workload") or {}).get("duration_s")
    return float(solo) if solo is not None else None


def _burst(params: dict[str, Any]) -> tuple[float, float, float] | None:
    """(start, length, run duration) in seconds, wherever the run recorded them."""
    wl = params.get("workload") or {}
    duration = wl.get("duration_s", params.get("duration_s"))
    if wl.get("burst_start_s") is None or wl.get("burst_length_s") is None or duration is None:
        return None
    return float(wl["burst_start_s"]), float(wl["burst_length_s"]), float(duration)


def _live_line(params: dict[str, Any]) -> str:
    parts = []
    if params.get("load_points"):
        parts.append(f"load points {', '.join(fmt_load(float(lp)) for lp in params['load_points'])}")
    burst = _burst(params)
    if burst:
        parts.append(f"burst from t={fmt_g(burst[0])} s for {fmt_g(burst[1])} s of a {fmt_g(burst[2])} s run")
    solo = _solo_s(params)
    if solo:
        parts.append(f"solo baseline {fmt_g(solo)} s")
    if params.get("seed") is not None:
        parts.append(f"seed {params['seed']}")
    fault = params.get("fault") or {}
    if fault.get("point"):
        parts.append(f"service time from a {fault.get('delay_ms', '?')} ms {fault.get('mode', '')} fault at "
                     f"{fault['point']}")
    if params.get("locust_processes"):
        parts.append(f"{params['locust_processes']} Locust process(es)")
    if params.get("wall_s"):
        parts.append(f"{fmt_g(params['wall_s'])} s of wall time")
    return ("Live run: " + "; ".join(parts) + ".") if parts else "Live run: no parameters recorded."


def _live_notes(sim: RunData | None, live: RunData) -> list[str]:
    """What makes the measured numbers less comparable: a different burst, a lagging load generator."""
    notes = []
    if sim is not None:
        sb, lb = _burst(sim.parameters), _burst(live.parameters)
        if sb and lb and sb != lb:
            notes.append(f"The live run's burst (t={fmt_g(lb[0])} s for {fmt_g(lb[1])} s of {fmt_g(lb[2])} s) differs from "
                         f"the simulated one (t={fmt_g(sb[0])} s for {fmt_g(sb[1])} s of {fmt_g(sb[2])} s), so part of any "
                         "gap comes from the workload, not the model.")
        ss, ls = _solo_s(sim.parameters), _solo_s(live.parameters)
        if ss and ls and ss != ls:
            notes.append(f"The live solo baseline ({fmt_g(ls)} s) is not the simulated one ({fmt_g(ss)} s), so the "
                         "quiet tenants' solo p99 is estimated from different traffic.")
    health = summarise(live.select(tenant=ALL_TENANTS), by=("design", "load_point", "metric"))
    for design, lp in sorted({(d, lp) for d, lp, _ in health}):
        def value(metric: str, design: str = design, lp: float = lp) -> float:
            return health.get((design, lp, metric), MISSING).mean

        sent, target = value("sent_rate"), value("target_rate")
        problems = []
        if not math.isnan(sent) and not math.isnan(target) and sent < 0.95 * target:
            problems.append(f"sent only {fmt_num(sent)} of {fmt_num(target)} requests/s")
        for metric, verb, noun in (("dropped", "dropped", "arrivals"), ("errors", "saw", "errors"),
                                   ("timeouts", "saw", "timeouts")):
            n = value(metric)
            if not math.isnan(n) and n > 0:
                problems.append(f"{verb} {n:,.0f} {noun}")
        if problems:
            notes.append(f"Live {design} at load {fmt_load(lp)}: the load generator {fmt_list(problems)}, so the "
                         "measured latencies describe the traffic actually sent.")
        lag = value("send_lag_p99")
        if not math.isnan(lag) and lag > SEND_LAG_NOTE_MS:
            notes.append(f"Live {design} at load {fmt_load(lp)}: the load generator launched 1% of its requests more "
                         f"than {fmt_num(lag)} ms late; latency counts from the intended send time, so that delay is "
                         "in the measured latencies but is not the service's.")
    return notes


# --- the builder --------------------------------------------------------------------------------

def build(data: PatternData) -> Report:
    primary_run = data.sim or data.live
    assert primary_run is not None  # load_pattern guarantees one source
    primary = View.of(primary_run)
    sim = View.of(data.sim) if data.sim else None
    live = View.of(data.live) if data.live else None
    if not primary.load_points:
        empty = f"The {primary_run.source} results in {primary_run.directory} have no rows, so there is nothing to compare."
        return Report(pattern=PATTERN, question=QUESTION, designs={}, workload=_workload(data.sim, data.live),
                      conclusions=[empty], invariants_note=checks_table(data.live, PATTERN)[1])
    notes = []
    if sim is None:
        notes.append("There is no simulation, so the tables and plots show the measured run alone: "
                     f"run `saaslab sim {PATTERN}` for the seeded comparison with confidence intervals.")
    elif sim.max_seeds < MIN_SEEDS:
        notes.append(f"The simulation used {sim.max_seeds} seed(s); conclusions need at least {MIN_SEEDS} "
                     f"(`saaslab sim {PATTERN} --seeds {MIN_SEEDS}`), so the intervals here are wide or missing.")
    if data.live is not None:
        notes += _live_notes(data.sim, data.live)
    missing = [label for m, label in RESULT_METRICS if not any(k[2] == m for k in primary.per_run)]
    if missing:
        notes.append(f"The {primary_run.source} rows have no {fmt_list(missing)}; those cells read n/a.")

    conclusions = [_winner_sentence(primary)]
    conclusions += [_load_sentence(primary, lp) for lp in primary.load_points]
    params = primary_run.parameters
    extra = (_separation_sentence(primary), _cost_sentence(primary, primary.middle_load),
             _jain_sentence(primary, primary.middle_load),
             _goodput_sentence(primary, primary.load_points[-1], params.get("slo_ms")))
    conclusions += [s for s in extra if s]

    figures = [_ratio_figure(primary, live if sim else None), _tenant_figure(primary, primary.middle_load)]
    invariants, invariants_note = checks_table(data.live, PATTERN)

    sim_vs_live, sim_vs_live_note = None, ""
    if live is None:
        sim_vs_live_note = (f"No live run yet, so the simulation is not checked against measurement: run "
                            f"`saaslab load {PATTERN} --quick`, then `saaslab report {PATTERN}`.")
        conclusions.append(sim_vs_live_note)
    elif sim is None:
        sim_vs_live_note = f"No simulation to compare the live run with: run `saaslab sim {PATTERN}`."
    else:
        sim_vs_live = _sim_vs_live_table(sim, live)
        sim_vs_live_note = ("One row per design, load point and metric the live run measured. A live run usually "
                            "has one seed per design and load point, so its values carry no interval.")
        conclusions += _agreement_sentences(sim, live)
        extra_sim_vs_live = (_same_seed_sentence(sim, live), _baseline_sentence(sim, live),
                             _calibration_sentence(sim.run.parameters, live))
        conclusions += [s for s in extra_sim_vs_live if s]
    checks = checks_sentence(data.live)
    if checks:
        conclusions.append(checks)

    return Report(
        pattern=PATTERN, question=QUESTION, designs=_designs(params, primary.designs),
        workload=_workload(data.sim, data.live), conclusions=conclusions, tables=_result_tables(primary),
        figures=figures, invariants=invariants, invariants_note=invariants_note, sim_vs_live=sim_vs_live,
        sim_vs_live_note=sim_vs_live_note, notes=notes)
