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

Each experiment is one `Section` of `REPORT`: another experiment of the simulation (its rows,
sentences, tables and figures) is one more section in that tuple, as the priority load shedder's
(scenarios/ratelimit_shedding.py, shedding.py here) is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from saaslab import patterns
from saaslab.report import PatternData, PatternReport, Report, Section, Table
from saaslab.report import build as build_report
from saaslab.report.declaration import has_sim, no_live, no_sim, on, sim_and_live
from saaslab.report.evidence import (
    LiveLatency,
    checks_sentence,
    no_live_run,
    no_simulation,
    seeds_note,
)
from saaslab.reports.ratelimit import conclusions as said
from saaslab.reports.ratelimit import figures, shedding, tables
from saaslab.reports.ratelimit.concurrency import naive_sentence, race_sentence, skew_sentence
from saaslab.reports.ratelimit.live import (
    Comparison,
    agreement_sentences,
    comparisons,
    live_notes,
    live_race_sentence,
    same_seed_sentence,
    sim_vs_live_table,
)
from saaslab.reports.ratelimit.setup import designs, workload
from saaslab.reports.ratelimit.shedding import ShedView
from saaslab.reports.ratelimit.view import GROUP_LABELS, NO_LIVE, View, sim_rejected_pct

PATTERN = "ratelimit"
QUESTION = patterns.get(PATTERN).question


@dataclass
class Ratelimit:
    """The loaded runs, their views and the simulated-versus-measured cells."""

    data: PatternData
    sim: View | None
    live: View | None
    comps: list[Comparison] = field(default_factory=list)
    shed: ShedView | None = None
    """The load shedder's simulated rows, which share the simulation's run but not its tables."""

    @classmethod
    def of(cls, data: PatternData) -> Ratelimit:
        sim = View.of(data.sim) if data.sim and data.sim.rows else None
        live = View.of(data.live) if data.live and data.live.rows else None
        shed = ShedView.of(data.sim) if data.sim and data.sim.rows else None
        return cls(data, sim, live, comparisons(sim, live) if (sim or live) else [], shed)

    @property
    def simulated(self) -> View:
        assert self.sim is not None
        return self.sim


def _no_simulation(_c: Ratelimit) -> str:
    return no_simulation(PATTERN, "accuracy, memory, boundary, skew and race results are missing and the measured "
                                  "429 rates stand alone")


_headline = on("simulated", said.headline)
_accuracy_figure = on("simulated", figures.accuracy_figure)


def _no_live(_c: Ratelimit) -> str:
    return no_live_run(PATTERN)


def _agreement(c: Ratelimit) -> list[str]:
    return agreement_sentences(c.comps)


def _same_seed(c: Ratelimit) -> str | None:
    assert c.sim is not None and c.live is not None
    return same_seed_sentence(c.sim, c.live, c.comps)


def _live_race(c: Ratelimit) -> str | None:
    return live_race_sentence(c.data.live) if c.data.live else None


def _sim_vs_live(c: Ratelimit) -> tuple[Table | None, str]:
    table = sim_vs_live_table(c.comps, c.sim is not None) if c.comps else None
    if c.live is None:
        return table, no_live_run(PATTERN)
    return table, ("One row per algorithm, load point and tenant group the live run measured. A live run has one "
                   "seed per cell, so its values carry no interval.")


def _notes(c: Ratelimit) -> list[str]:
    notes = [n for n in (seeds_note(PATTERN, c.sim.max_seeds) if c.sim else None,) if n]
    return notes + (live_notes(c.sim, c.live) if c.live else [])


def _designs(c: Ratelimit) -> dict[str, str]:
    present = c.sim.designs if c.sim else c.live.designs if c.live else []
    return designs(c.data.sim.parameters if c.data.sim else {}, present)


def _latencies(c: Ratelimit) -> list[LiveLatency]:
    return [LiveLatency(x.design, x.load_point, f"{GROUP_LABELS[x.group]} p99", x.live_p99.mean)
            for x in c.comps if x.live_p99.known]


def _over_sim(*rules):  # type: ignore[no-untyped-def]
    return tuple(on("simulated", rule) for rule in rules)


REPORT = PatternReport(
    slug=PATTERN,
    context=Ratelimit.of,
    sections=(
        Section("no simulation", when=no_sim, conclusions=(_no_simulation,)),
        Section("accuracy, memory and the noisy neighbour", when=has_sim,
                conclusions=(_headline, *_over_sim(said.accuracy_sentence, said.separation_sentence,
                                                   said.over_under_sentence, said.boundary_sentence,
                                                   said.memory_sentence, said.neighbour_sentence)),
                tables=_over_sim(tables.accuracy_table, tables.boundary_memory_table, tables.neighbour_table),
                figures=(_accuracy_figure, *_over_sim(figures.boundary_figure, figures.memory_figure))),
        Section("concurrency and clock skew", when=has_sim,
                conclusions=_over_sim(race_sentence, skew_sentence, naive_sentence),
                tables=_over_sim(tables.concurrency_table), figures=_over_sim(figures.race_skew_figure)),
        Section("priority load shedding", when=lambda c: c.shed is not None,
                conclusions=(on("shed", shedding.shedding_sentences),),
                tables=(on("shed", shedding.shedding_table),), figures=(on("shed", shedding.shedding_figure),)),
        Section("no live run", when=no_live, conclusions=(_no_live,)),
        Section("simulated versus measured", when=sim_and_live,
                conclusions=(_agreement, _same_seed), figures=(lambda c: figures.live_figure(c.comps),)),
        Section("the live race", conclusions=(_live_race,)),
    ),
    answer=(_no_simulation, _headline, (_agreement, 1), checks_sentence, _no_live, _live_race),
    headline_figure=_accuracy_figure,
    notes=(_notes,),
    designs=_designs,
    workload=lambda c: workload(c.data.sim, c.data.live),
    sim_vs_live=_sim_vs_live,
    live_latencies=_latencies,
)


def build(data: PatternData) -> Report:
    return build_report(REPORT, data)


__all__ = ["NO_LIVE", "QUESTION", "REPORT", "View", "build", "sim_rejected_pct"]
