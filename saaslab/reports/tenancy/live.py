"""The tenancy report's simulated-versus-measured comparison: the table, the agreement, calibration and
what makes the live figures less comparable."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from saaslab.report import (
    MISSING,
    RunData,
    Summary,
    Table,
    fmt_g,
    fmt_gap,
    fmt_list,
    fmt_load,
    fmt_loads,
    fmt_num,
    gap_percent,
    load_key,
    summarise,
)
from saaslab.report.numbers import mean
from saaslab.reports.tenancy.setup import burst_of, solo_s
from saaslab.reports.tenancy.view import AGREEMENT_PCT, COMPARED_METRICS, LABELS, View, x_words
from saaslab.results import ALL_TENANTS


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


def _spread(values: list[float]) -> str:
    """'22.4 ms' or '22.4 ms (22.1 to 22.8 ms over 3 runs)'."""
    if len(values) == 1:
        return f"{fmt_num(values[0])} ms"
    return f"{fmt_num(mean(values))} ms ({fmt_num(min(values))} to {fmt_num(max(values))} ms over {len(values)} runs)"


def _range(values: list[float]) -> str:
    """'3.2 ms' or '3.2 to 5.9 ms'."""
    low, high = min(values), max(values)
    return f"{fmt_num(low)} ms" if len(values) == 1 or low == high else f"{fmt_num(low)} to {fmt_num(high)} ms"


def calibration_sentence(sim_params: dict[str, Any], live: View) -> str | None:
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
        details.append(f"{fmt_gap(gap_percent(float(assumed), mean(hold)))} against the assumption")
    if overhead:
        details.append(f"{fmt_num(mean(overhead))} ms over the injected delay")
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
    extra = mean(outside) - mean(solo_outside)
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


def same_seed_sentence(sim: View, live: View) -> str | None:
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
            by_load[c.load_point].append(f"{c.design} {fmt_num(value)}x (measured {x_words(c.live)})")
    if not by_load:
        return None
    parts = [f"{fmt_list(items)} at load {fmt_load(lp)}" for lp, items in by_load.items()]
    return (f"On the live run's own arrival schedule (seed {seed}) the simulation gives quiet p99 / solo of "
            f"{'; '.join(parts)}.")


def baseline_sentence(sim: View, live: View) -> str | None:
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


def agreement_sentences(sim: View, live: View) -> list[str]:
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
                       f"(largest: {worst.design} at load {fmt_load(worst.load_point)}, simulated {x_words(worst.sim)}, "
                       f"measured {x_words(worst.live)}); {within} of {len(ratio)} pairs {'is' if within == 1 else 'are'} "
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


def sim_vs_live_table(sim: View, live: View) -> Table:
    rows = [[c.design, fmt_load(c.load_point), LABELS[c.metric],
             c.sim.text("x" if c.metric == "quiet_p99_vs_solo" else ""),
             c.live.text("x" if c.metric == "quiet_p99_vs_solo" else ""), fmt_gap(c.gap)]
            for c in _comparisons(sim, live)]
    return Table("Noisy neighbour: simulated versus measured",
                 ["design", "load", "metric", "simulated (mean ± 95% CI)", "measured", "gap"], rows,
                 caption="gap = (measured − simulated) / simulated.")


def live_notes(sim: RunData | None, live: RunData) -> list[str]:
    """What makes the measured numbers less comparable: a different burst, a generator that fell short."""
    notes = []
    if sim is not None:
        sb, lb = burst_of(sim.parameters), burst_of(live.parameters)
        if sb and lb and sb != lb:
            notes.append(f"The live run's burst (t={fmt_g(lb[0])} s for {fmt_g(lb[1])} s of {fmt_g(lb[2])} s) differs from "
                         f"the simulated one (t={fmt_g(sb[0])} s for {fmt_g(sb[1])} s of {fmt_g(sb[2])} s), so part of any "
                         "gap comes from the workload, not the model.")
        ss, ls = solo_s(sim.parameters), solo_s(live.parameters)
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
    return notes
