"""The failover report's simulated-versus-measured comparison: per drill (design and fault) and metric, the
simulation of the same fault at the lab's timers beside the measured value."""

from __future__ import annotations

from dataclasses import dataclass

from saaslab.report import MISSING, Summary, Table, fmt_g, gap_cell
from saaslab.report.agreement import NEAREST, agrees, simulated_text
from saaslab.report.agreement import agreement_sentences as shared_agreement
from saaslab.report.evidence import live_trouble_notes
from saaslab.reports.failover.view import NO_LIVE, PATTERN, View
from scenarios.failover.plan import FAULTS, Condition

COMPARED = (("unavailability", "unavailable (s)"), ("failover_s", "fault to promotion (s)"),
            ("writes_lost", "acknowledged writes lost"), ("lost_fraction", "lost share"),
            ("split_brain_writes", "split-brain writes"), ("writes_unacknowledged_present", "unacknowledged but present"),
            ("stale_reads", "stale reads"))


@dataclass
class Comparison:
    design: str
    metric: str
    label: str
    condition: Condition
    sim_condition: Condition | None
    sim: Summary
    live: Summary

    def agrees(self) -> bool | None:
        return agrees(self.sim, self.live, zeros_agree=True)


def nearest(sim: View, c: Condition) -> Condition | None:
    """The simulated condition closest to a live one: the same fault, then the same timers, lag and hold."""
    found = [x for x in sim.conditions if x.fault == c.fault]
    if not found:
        return None
    return min(found, key=lambda x: (x.timers != c.timers, abs(x.lag_ms - c.lag_ms), abs(x.hold_s - c.hold_s), x))


def comparisons(sim: View | None, live: View) -> list[Comparison]:
    out = []
    for c in live.conditions:
        sim_c = nearest(sim, c) if sim is not None else None
        for d in live.designs:
            for metric, label in COMPARED:
                measured = Summary.of([v for lp in live.load_points for v in live.seeds(d, lp, c.metric(metric)).values()])
                if not measured.known:
                    continue
                simulated = sim.at(d, sim.drill_rate, metric, sim_c) if sim is not None and sim_c is not None else MISSING
                out.append(Comparison(d, metric, label, c, sim_c, simulated, measured))
    return out


def _fault(c: Condition) -> str:
    return c.fault + ("" if c.fault == "kill" else f" {fmt_g(c.hold_s)} s")


COLUMNS = ["design", "fault", "timers", "metric", "simulated", "measured", "gap"]


def sim_vs_live_table(comps: list[Comparison], sim_present: bool) -> Table:
    rows = []
    for x in comps:
        sim_cell = simulated_text(x.sim, x.sim_condition != x.condition, sim_present)
        rows.append([x.design, _fault(x.condition), x.condition.timers, x.label, sim_cell, x.live.text(),
                     gap_cell(x.sim, x.live)])
    return Table("Simulated versus measured", COLUMNS, rows,
                 caption=("Simulated: the same fault at the drill's timers and the simulation's reference write rate, "
                          f"mean ± 95% CI over seeds (marked{NEAREST}: the nearest condition swept). Measured: the "
                          "drills, over their runs. gap = (measured − simulated) / simulated."))


def no_live_table(sim: View) -> Table:
    """Without a live run: the simulated side at the drills' cells, the measured column waiting for one."""
    rows = []
    for fault in FAULTS:
        c = sim.loss_condition(fault, sim.drill_lag)
        if c is None:
            continue
        for d in sim.designs:
            for metric, label in COMPARED:
                s = sim.at(d, sim.drill_rate, metric, c)
                if s.known:
                    rows.append([d, _fault(c), c.timers, label, s.text(), NO_LIVE, "n/a"])
    return Table("Simulated versus measured", COLUMNS, rows,
                 caption=(f"No live run yet: `saaslab {PATTERN} drill --all` measures these; the simulated column is "
                          f"the drills' cells (the lab's timers, {fmt_g(sim.drill_rate)} writes/s, replication lag "
                          f"{fmt_g(sim.drill_lag)} ms), mean ± 95% CI over seeds."))


def agreement_sentences(comps: list[Comparison]) -> list[str]:
    return shared_agreement(
        comps, lambda x: (f"{x.design} {x.label} under {_fault(x.condition)} (simulated {x.sim.text()}, measured "
                          f"{x.live.text()})"),
        nothing_shared="The drills share no (design, fault, metric) with the simulation, so the two cannot be compared.",
        against="the simulation at the lab's timers")


def live_notes(live: View) -> list[str]:
    get = lambda d, lp, m: live.get(d, lp, live.conditions[0].metric(m))  # noqa: E731
    return live_trouble_notes(get, live.designs, live.load_points)
