"""The sagas report's simulated-versus-measured comparison: per live cell and metric, the simulation under the
same fault condition beside the measured value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from saaslab.report import MISSING, Summary, Table, fmt_g, fmt_list, fmt_load, gap_cell
from saaslab.report.agreement import NEAREST, agrees, simulated_text
from saaslab.report.agreement import agreement_sentences as shared_agreement
from saaslab.report.evidence import live_trouble_notes, unsimulated_note
from saaslab.reports.sagas.view import NO_LIVE, PATTERN, View
from scenarios.sagas.plan import CRASH_RATES, SETUP, Condition, Setup

COMPARED = (("latency_p50", "p50 (ms)"), ("latency_p99", "p99 (ms)"), ("throughput", "completed orders/s"),
            ("compensated_share", "share compensated"))
OPTIONAL = (("messages_per_saga", "messages per order"), ("events_per_saga", "stream events per order"),
            ("lock_hold_p50", "stock lock held p50 (ms)"), ("lock_hold_p99", "stock lock held p99 (ms)"),
            ("in_doubt_p50", "in doubt p50 (ms)"), ("in_doubt_p99", "in doubt p99 (ms)"), ("time_to_consistency", "consistent after a crash (ms)"),
            ("anomalies_per_10k", "anomalies per 10k"))
"""Compared when the live run wrote them."""


@dataclass
class Comparison:
    design: str
    load_point: float
    metric: str
    label: str
    condition: Condition
    sim_condition: Condition | None
    sim: Summary
    live: Summary

    def agrees(self) -> bool | None:
        return agrees(self.sim, self.live)


def _nearest(sim: View, c: Condition) -> Condition | None:
    if not sim.conditions:
        return None
    return min(sim.conditions, key=lambda x: (abs(x.failure - c.failure) * 10 + abs(x.crash - c.crash), x))


def comparisons(sim: View | None, live: View) -> list[Comparison]:
    out = []
    metrics = [*COMPARED, *((m, label) for m, label in OPTIONAL
                            if any(live.has_metric(c.metric(m)) for c in live.conditions))]
    for c in live.conditions:
        sim_c = _nearest(sim, c) if sim is not None else None
        for d in live.designs:
            for lp in live.load_points:
                if not live.has(d, lp):
                    continue
                for metric, label in metrics:
                    measured = live.at(d, lp, metric, c)
                    if not measured.known:
                        continue
                    simulated = sim.at(d, lp, metric, sim_c) if sim is not None and sim_c is not None else MISSING
                    out.append(Comparison(d, lp, metric, label, c, sim_c, simulated, measured))
    return out


def sim_vs_live_table(comps: list[Comparison], sim_present: bool) -> Table:
    rows = []
    for x in comps:
        sim_cell = simulated_text(x.sim, x.sim_condition != x.condition, sim_present)
        rows.append([x.design, fmt_load(x.load_point), x.condition.label, x.label, sim_cell, x.live.text(),
                     gap_cell(x.sim, x.live)])
    return Table("Simulated versus measured", ["design", "load", "faults", "metric", "simulated", "measured", "gap"],
                 rows, caption=("Simulated: the sweep at the live run's load and fault condition, mean ± 95% CI over "
                                f"seeds (marked{NEAREST}: the nearest condition swept). A live run has one value per "
                                "cell. gap = (measured − simulated) / simulated."))


def agreement_sentences(comps: list[Comparison]) -> list[str]:
    return shared_agreement(
        comps, lambda x: (f"{x.design} {x.label} at load {fmt_load(x.load_point)} (simulated {x.sim.text()}, measured "
                          f"{x.live.text()})"),
        nothing_shared="The live run shares no (design, load, metric) with the simulation, so the two cannot be "
                       "compared.")


def live_notes(sim: View | None, live: View) -> list[str]:
    unsimulated = unsimulated_note(live.load_points, sim.load_points if sim else [], "values")
    get = lambda d, lp, m: live.at(d, lp, m, live.conditions[0])  # noqa: E731
    return [*([unsimulated] if unsimulated else []), *live_trouble_notes(get, live.designs, live.load_points)]


def live_run_notes(parameters: Mapping[str, Any], sim: Setup = SETUP) -> list[str]:
    """What the live run did differently from the model, from its run.json, so a gap can be read."""
    notes = [f"The live run skipped {design}: {why}." for design, why in (parameters.get("skipped") or {}).items()]
    crash_rate = float(parameters.get("crash_rate") or 0.0)
    service = parameters.get("service") or {}
    if crash_rate > 0:
        notes.append(
            f"The live run crashed one of its {parameters.get('workers', '?')} service workers {crash_rate:g} times "
            f"per second of load, with a saga lease of {fmt_g(service.get('saga_lease_s', sim.lease_s))} s and a "
            f"visibility timeout of {fmt_g(service.get('saga_visibility_timeout_s', sim.visibility_timeout_s))} s; "
            f"the simulation crashes the whole process (none, or {fmt_list([f'{c:g}' for c in CRASH_RATES if c])} per "
            f"second) and models the service's defaults (lease {fmt_g(sim.lease_s)} s, visibility timeout "
            f"{fmt_g(sim.visibility_timeout_s)} s), so a measured p99 is largely the orders a crash caught waiting "
            "for recovery.")
    notes.append(f"The lab's payment provider answers with one database statement; the model's takes "
                 f"{fmt_g(sim.provider_ms)} ms + {fmt_g(sim.provider_jitter_ms)} ms mean jitter, inside the "
                 "payments transaction, so measured medians below the simulated ones are expected.")
    return notes


def no_live_table(sim: View) -> Table:
    """Without a live run: the simulated side of the comparison, the measured column waiting for one."""
    lp, c = sim.reference_load, sim.calm
    rows = [[d, fmt_load(lp), c.label, label, sim.at(d, lp, metric, c).text(), NO_LIVE, "n/a"]
            for d in sim.designs for metric, label in COMPARED]
    return Table("Simulated versus measured", ["design", "load", "faults", "metric", "simulated", "measured", "gap"],
                 rows, caption=(f"No live run yet: `saaslab load {PATTERN}` measures these; the simulated column is "
                                "the sweep at its middle load without faults, mean ± 95% CI over seeds."))
