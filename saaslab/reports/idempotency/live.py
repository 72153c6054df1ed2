"""The idempotency report's simulated-versus-measured comparison: like for like, the simulation's replay
of the live plan beside the live run."""

from __future__ import annotations

import math
from dataclasses import dataclass

from saaslab.report import (
    MISSING,
    Expected,
    Summary,
    Table,
    fmt_gap,
    fmt_list,
    fmt_load,
    fmt_num,
    gap_cell,
    gap_percent,
)
from saaslab.report.evidence import live_trouble_notes, unsimulated_note
from saaslab.reports.idempotency.view import (
    AGREEMENT_PCT,
    NO_LIVE,
    OWN_WORKLOAD,
    PATTERN,
    View,
    order,
    per_10k,
)

# --- simulated versus measured ---------------------------------------------------------------------

COMPARED = (("duplicates_per_10k", "duplicates per 10k"), ("orphans_per_10k", "orphans per 10k"),
            ("latency_p99", "p99 (ms)"))


@dataclass
class Comparison:
    design: str
    load_point: float
    simulated: bool
    measured: bool
    sim: dict[str, Summary]
    live: dict[str, Summary]
    as_live: bool = False
    """The simulated side is the model replaying the live plan (`aslive_*` metrics)."""

    def both_zero(self, metric: str) -> bool:
        s, m = self.sim.get(metric, MISSING), self.live.get(metric, MISSING)
        return s.known and m.known and s.mean == m.mean == 0

    def agrees(self, metric: str) -> bool | None:
        s, m = self.sim.get(metric, MISSING), self.live.get(metric, MISSING)
        if not (s.known and m.known) or s.mean == m.mean == 0:
            return None  # zero against zero says nothing about the model's rates (see `both_zero`)
        if not math.isnan(s.ci95) and s.low <= m.mean <= s.high:
            return True
        gap = gap_percent(s.mean, m.mean)
        return not math.isnan(gap) and abs(gap) <= AGREEMENT_PCT


def comparisons(sim: View | None, aslive: View | None, live: View | None) -> list[Comparison]:
    """One comparison per cell the live run measured (without one, per simulated cell). The simulated side is
    the replay of the live plan (`aslive`) where the simulation has it at that cell, else its own workload."""
    if live is not None:
        cells = [(d, lp) for d in live.designs for lp in live.load_points if live.has(d, lp)]
    else:
        views = [v for v in (aslive, sim) if v is not None]
        cells = list(dict.fromkeys((d, lp) for d in order(d for v in views for d in v.designs)
                                   for lp in sorted({lp for v in views for lp in v.load_points})
                                   if any(v.has(d, lp) for v in views)))
    out = []
    for d, lp in cells:
        replayed = aslive is not None and aslive.has(d, lp)
        source = aslive if replayed else sim
        simulated = source is not None and source.has(d, lp)
        out.append(Comparison(d, lp, simulated, live is not None,
                              {m: source.get(d, lp, m) for m, _ in COMPARED} if simulated and source else {},
                              {m: live.get(d, lp, m) for m, _ in COMPARED} if live else {}, replayed))
    return out


def _gap(c: Comparison, metric: str) -> str:
    return gap_cell(c.sim.get(metric, MISSING), c.live.get(metric, MISSING))


def sim_vs_live_table(comps: list[Comparison], sim_present: bool) -> Table:
    rows = []
    replayed = any(c.as_live for c in comps)
    own = [c for c in comps if c.simulated and not c.as_live]
    for c in comps:
        row = [c.design, fmt_load(c.load_point)]
        for metric, _ in COMPARED:
            if c.simulated:
                sim_cell = c.sim[metric].text() + (OWN_WORKLOAD if replayed and not c.as_live else "")
            else:
                sim_cell = "not simulated" if sim_present else "no simulation"
            row += [sim_cell, c.live[metric].text() if c.measured else NO_LIVE,
                    _gap(c, metric) if c.measured else "n/a"]
        rows.append(row)
    columns = ["design", "load"]
    for _, label in COMPARED:
        columns += [f"{label} simulated", f"{label} measured", "gap"]
    if replayed:
        simulated = ("The simulated column replays the live load test's plan in the model "
                     "(`scenarios.idempotency.LIVE_PLAN`, as the workload section spells it out: the same clients, "
                     "fault phases, crashes, reconcile pass and service), mean ± 95% CI over seeds"
                     + (f"; cells marked{OWN_WORKLOAD} come from the simulation's own, milder workload (it did not "
                        "replay the live plan at that load)" if own else "") + ". ")
    else:
        simulated = ("Simulated: the simulation's own workload (it has no replay of the live plan: re-run "
                     f"`saaslab sim {PATTERN}`), mean ± 95% CI over seeds. ")
    return Table("Simulated versus measured: duplicates per 10,000 payments by design", columns, rows,
                 caption=("Duplicates: extra charges or payment rows per 10,000 logical payments; orphans: charges "
                          "without their payment row after the completer, per 10,000; p99: per answered attempt. "
                          + simulated + "A live run has one value per cell. gap = (measured − simulated) / simulated."))


def agreement_sentences(comps: list[Comparison]) -> list[str]:
    out = []
    dup = [c for c in comps if c.agrees("duplicates_per_10k") is not None]
    zero = [c for c in comps if c.both_zero("duplicates_per_10k")]
    if not dup and not zero:
        return ["The live run shares no (design, load point) with a simulated duplicate rate, so the two cannot be "
                "compared."]
    whom = "the simulation's replay of the live plan" if all(c.as_live for c in dup + zero) else "the simulation"
    if dup:
        agree = [c for c in dup if c.agrees("duplicates_per_10k")]
        out.append(f"{len(agree)} of {len(dup)} measured duplicate rates agree with {whom} (inside its 95% CI or "
                   f"within {AGREEMENT_PCT:g}%)" + (f"; in {len(zero)} more both were zero, which tests "
                                                    "no rate." if zero else "."))
    else:
        out.append(f"The live run and {whom} made no duplicate in any of the {len(zero)} cells they share: zero "
                   "against zero, which shows the designs safe but cannot test the model's rates.")
    surprising = [c for c in dup if c.sim["duplicates_per_10k"].mean == 0 < c.live["duplicates_per_10k"].mean]
    if surprising:
        out.append("Measured duplicates where the simulation had none: " + "; ".join(
            f"{c.design} at load {fmt_load(c.load_point)} {per_10k(c.live['duplicates_per_10k'])}" for c in surprising)
                   + ". The service does something the model does not: look at the live history.")
    safe = sorted({c.design for c in zero})
    if safe:
        out.append(f"{fmt_list(safe)} made no duplicate live either.")
    p99 = [(c, c.sim["latency_p99"], c.live["latency_p99"]) for c in comps if c.simulated and c.measured
           and c.sim["latency_p99"].known and c.live["latency_p99"].known]
    if p99:
        c, s, m = max(p99, key=lambda x: abs(gap_percent(x[1].mean, x[2].mean)))
        out.append(f"The p99s differ most for {c.design} at load {fmt_load(c.load_point)}: simulated "
                   f"{fmt_num(s.mean)} ms, measured {fmt_num(m.mean)} ms ({fmt_gap(gap_percent(s.mean, m.mean))}).")
    return out


def injected_faults(parameters: dict) -> list[str]:
    """The faults the live run's plan armed through lab mode, in words (none when it ran without faults)."""
    plan = parameters.get("plan") or {}
    if not plan.get("faults"):
        return []
    named = (("p_timeout_after_effect", "provider timeouts after the charge"), ("p_slow", "a slow provider"),
             ("crashes", "worker crashes"))
    return [words for key, words in named if plan.get(key)]


def live_notes(sim: View | None, aslive: View | None, live: View) -> list[str]:
    ran = sorted({lp for v in (sim, aslive) if v is not None for lp in v.load_points})
    unsimulated = unsimulated_note(live.load_points, ran, "values")
    trouble = live_trouble_notes(live.get, live.designs, live.load_points)
    faults = injected_faults(live.run.parameters)
    if trouble and faults:
        # Errors and timeouts are what the injected faults are for; the checks judge whether any did harm.
        seen = "; ".join(t.removeprefix("Live ").rstrip(".") for t in trouble)
        trouble = [Expected(f"The live plan injects {fmt_list(faults)} on purpose, so attempts fail and time out: "
                            f"{seen}. Whether any of them charged twice or left a charge unrecorded is for the "
                            "invariant checks to say.")]
    return [*([unsimulated] if unsimulated else []), *trouble]
