"""The rate-limiting report's simulated-versus-measured comparison of the noisy neighbour, and the
live run's own findings and caveats."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from saaslab.report import (
    MISSING,
    Expected,
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
)
from saaslab.report.evidence import live_trouble_notes, unsimulated_note
from saaslab.report.numbers import gap_cell, load_key
from saaslab.reports.ratelimit.view import (
    AGREEMENT_PCT,
    COMPARED_LOAD_POINTS,
    GROUP_LABELS,
    GROUPS,
    NO_LIVE,
    NOISY,
    SAME_VALUE,
    UNSAFE,
    View,
    live_value,
    order,
    pct_words,
    policy_text,
    sim_rejected_pct,
    span,
)

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


def points(diff: float) -> str:
    """A difference in percentage points, without a '-0.0'."""
    return f"{diff:+.1f} pp" if round(diff, 1) != 0 else "0.0 pp"


def rate_gap(c: Comparison) -> str:
    return gap_cell(c.sim_rate, c.live_rate, difference=lambda sim, live: points(live.mean - sim.mean))


def comparisons(sim: View | None, live: View | None) -> list[Comparison]:
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


def sim_vs_live_table(comps: list[Comparison], sim_present: bool) -> Table:
    rows = []
    for c in comps:
        if c.simulated:
            sim_cell = c.sim_rate.text("%")
        else:
            sim_cell = "not simulated" if sim_present else "no simulation"
        live_rate = c.live_rate.text("%") if c.measured else NO_LIVE
        live_p99 = c.live_p99.text(" ms") if c.measured else NO_LIVE
        rows.append([c.design, fmt_load(c.load_point), GROUP_LABELS[c.group], sim_cell, live_rate, rate_gap(c),
                     "not modelled", live_p99, "n/a"])
    return Table("Noisy neighbour: simulated versus measured",
                 ["design", "load (x quota)", "tenants", "429 rate simulated", "429 rate measured", "gap",
                  "p99 simulated", "p99 measured", "gap"], rows,
                 caption=("429 rate: share of requests refused (simulated: mean ± 95% CI over seeds). gap = "
                          "(measured − simulated) / simulated, with the difference in percentage points. The "
                          "simulation decides without a latency model, so its p99 is not modelled. The 'all "
                          "tenants' simulated rate pools each tenant's refusals by its offered requests."))


def agreement_sentences(comps: list[Comparison]) -> list[str]:
    rated = [c for c in comps if c.rated]
    if not rated:
        return ["The live run shares no (algorithm, load point) with a simulated 429 rate, so the two cannot be "
                "compared."]
    # Zero against zero (tenants never refused) confirms no rate, so it is counted apart, never as agreement.
    zero = [c for c in rated if c.sim_rate.mean == c.live_rate.mean == 0]
    compared = [c for c in rated if c not in zero]
    agree = [c for c in compared if not math.isnan(c.gap) and abs(c.gap) <= AGREEMENT_PCT]
    out = [f"{len(agree)} of {len(compared)} simulated 429 rates are within {AGREEMENT_PCT:g}% of the measured ones"
           + (f"; in {len(zero)} more both were zero, which tests no rate." if zero else ".")]
    gaps = [c for c in rated if not math.isnan(c.gap)]
    if gaps:
        w = max(gaps, key=lambda c: abs(c.gap))
        out.append(f"The largest relative gap is {w.design} at load {fmt_load(w.load_point)} ({GROUP_LABELS[w.group]}): "
                   f"simulated {pct_words(w.sim_rate)}, measured {pct_words(w.live_rate)} ({fmt_gap(w.gap)}).")
    unforeseen = [c for c in rated if c.sim_rate.mean == 0 < c.live_rate.mean]
    if unforeseen:
        out.append("Measured refusals where the simulation refused none: " + "; ".join(
            f"{c.design} at load {fmt_load(c.load_point)} ({GROUP_LABELS[c.group]}) {pct_words(c.live_rate)}"
            for c in unforeseen) + ".")
    p99 = [c.live_p99.mean for c in comps if c.live_p99.known]
    if p99:
        out.append(f"Measured p99 ranged {span(p99, lambda x: f'{fmt_num(x)} ms')}; the simulation has no latency "
                   "model to set beside it.")
    return out


def same_seed_sentence(sim: View, live: View, comps: list[Comparison]) -> str | None:
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
            simulated = sim.seeds(d, lp, "neighbour_rejected_pct", NOISY).get(seed)
            measured = live.seeds(d, lp, "rejected_rate", NOISY).get(seed)
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


def setup_mismatch(sim: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """Sentences for each way the live noisy neighbour differs from the simulated one (policy, duration)."""
    out = []
    sim_policy = sim.get("neighbour_policy") or sim.get("policy") or {}
    live_policy = live.get("policy") or {}
    if sim_policy and live_policy and (sim_policy.get("requests"), float(sim_policy.get("window_s", 0))) != (
            live_policy.get("requests"), float(live_policy.get("window_s", 0))):
        out.append(f"The live run's policy ({policy_text(live_policy)}) differs from the simulated noisy "
                   f"neighbour's ({policy_text(sim_policy)}), so their 429 rates are not like for like.")
    sim_s = (sim.get("durations_s") or {}).get("neighbour")
    live_s = live.get("duration_s")
    if sim_s is not None and live_s is not None and float(sim_s) != float(live_s):
        out.append(f"The live runs lasted {fmt_g(live_s)} s and the simulated noisy neighbour {fmt_g(sim_s)} s: a bucket's "
                   "initial burst weighs more in the shorter one, so their 429 rates differ for that reason too.")
    return out


def live_race_sentence(live: RunData) -> str | None:
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
        parts.append(f"{fmt_list(order(exact))} admitted exactly {limit}")
    for d in order(set(results) - set(exact)):
        r = results[d]
        held = "held" if r.get("no_over_admission") else "failed"
        parts.append(f"{d} admitted {r.get('admitted')} (no_over_admission {held})")
    return (f"Live, {race.get('requests')} requests of one tenant sent at once{across} at a limit of {limit}: "
            + "; ".join(parts) + ".")


LIVE_TROUBLE = (("errors", "errors"), ("timeouts", "timeouts"), ("dropped", "dropped arrivals"),
                ("undecided", "answers the limiter did not decide"))


def live_notes(sim: View | None, live: View) -> list[str]:
    notes = []
    if len(live.load_points) != len(COMPARED_LOAD_POINTS):
        measured = (f"The live run measured {fmt_loads(live.load_points)}; the comparison asks for "
                    f"{len(COMPARED_LOAD_POINTS)} load points")
        if live.run.parameters.get("quick"):
            notes.append(Expected(f"{measured}, and a quick run (`saaslab load ratelimit --quick`) measures one: "
                                  "`saaslab load ratelimit` measures them all."))
        else:
            notes.append(f"{measured}.")
    if sim is not None:
        unsimulated = unsimulated_note(live.load_points, sim.load_points, "429 rate")
        if unsimulated:
            notes.append(unsimulated)
    if UNSAFE in live.designs:
        notes.append(Expected(f"The simulation's noisy neighbour decides requests one at a time, so its {UNSAFE} "
                              f"rates are fixed_window's; live, {UNSAFE} races across the service workers and may "
                              "refuse fewer."))
    if sim is not None:
        notes += setup_mismatch(sim.run.parameters, live.run.parameters)
    return notes + live_trouble_notes(live.get, live.designs, live.load_points, LIVE_TROUBLE)
