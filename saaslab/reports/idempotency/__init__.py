"""The idempotency report: how often each design charges a payment twice, or leaves a charge without
its payment row, under client timeouts, retries, provider faults and crashes, and what the
protection costs.

The tables, plots and most conclusions come from `scenarios/idempotency/` (its docstring names
every metric and the model): only a simulation has the seeds for confidence intervals across load
levels. The simulated-versus-measured table sets duplicates per 10,000 payments (and orphans, and
the p99) beside a live run's, like for like: its simulated side is the simulation's replay of the
live load test's plan (`scenarios.idempotency.LIVE_PLAN`, the `aslive_*` rows), the same clients,
double clicks, fault phases, crashes and reconcile pass, not the simulation's own milder workload
(used, and marked, only where a sweep has no replay at that load point).

The live schema (what `saaslab load idempotency` writes; loadtests/idempotency.py records it):

* `live/results.csv`, rows of the results schema with source "live", pattern "idempotency",
  design in {none, redis, postgres}, `seed` the live run's seed (one row per cell), `load_point` as
  in the simulation (offered logical payments per second over the service's payment capacity),
  tenant "*", and the metrics
  - `duplicates_per_10k` (unit per_10k): per key, the larger of (succeeded charges - 1) and
    (payment rows - 1), when positive, summed, per 10,000 logical payments (distinct keys sent),
    from the provider's charges and the ledger read back after the completer has run;
  - `orphans_per_10k` (per_10k): `no_orphan_charges` violations per 10,000 logical payments;
  - `latency_p99` (ms): per HTTP attempt that got an answer, from send to answer (HDR histogram).
  Optional, shown when present: `payments`, `attempts` (requests), `conflicts_pct` (percent),
  `retries_per_request` (ratio), `replay_mismatch` (requests), `checks_valid` (bool), `errors`,
  `timeouts`, `dropped` (requests).
* `live/check.json`, the `CheckResult`s of `reference_impl.idempotency.invariants.check` over the
  live history and the final state, one per check and design, named `<check>[<design>]` (for
  example `exactly_one_effect[none]`); a name without brackets applies to every design of the run.

Without a live run the measured columns read "no live run yet" and a conclusion says how to make one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from saaslab import patterns
from saaslab.report import PatternData, PatternReport, Report, Section, Table
from saaslab.report import build as build_report
from saaslab.report.declaration import designs_present, has_sim, no_live, no_sim, on, sim_and_live
from saaslab.report.evidence import LiveLatency, checks_sentence, no_live_run, no_simulation, seeds_note
from saaslab.reports.idempotency import conclusions as said
from saaslab.reports.idempotency.checks import invariants
from saaslab.reports.idempotency.figures import (
    cost_figure,
    cost_table,
    effects_figure,
    effects_table,
    live_figure,
)
from saaslab.reports.idempotency.live import (
    Comparison,
    agreement_sentences,
    comparisons,
    live_notes,
    sim_vs_live_table,
)
from saaslab.reports.idempotency.setup import DESIGN_TEXT, workload
from saaslab.reports.idempotency.view import AS_LIVE, NO_LIVE, OWN_WORKLOAD, PATTERN, View

QUESTION = patterns.get(PATTERN).question


def _view(data: PatternData, prefix: str = "") -> View | None:
    """The simulation's own rows (or, with `AS_LIVE`, its replay of the live plan); None when there are none."""
    view = View.of(data.sim, prefix) if data.sim and data.sim.rows else None
    return view if view is not None and view.values else None


@dataclass
class Idempotency:
    """The loaded runs, their views and the simulated-versus-measured cells."""

    data: PatternData
    sim: View | None
    aslive: View | None
    live: View | None
    comps: list[Comparison] = field(default_factory=list)

    @classmethod
    def of(cls, data: PatternData) -> Idempotency:
        sim, aslive = _view(data), _view(data, AS_LIVE)
        live = View.of(data.live) if data.live and data.live.rows else None
        return cls(data, sim, aslive, live, comparisons(sim, aslive, live) if (sim or aslive or live) else [])

    @property
    def simulated(self) -> View:
        assert self.sim is not None
        return self.sim


def _no_simulation(_c: Idempotency) -> str:
    return no_simulation(PATTERN, "there are no confidence intervals across loads and the measured values stand alone")


_headline, _checker = on("simulated", said.headline), on("simulated", said.checker_sentence)
_effects_figure = on("simulated", effects_figure)


def _no_live(_c: Idempotency) -> str:
    return no_live_run(PATTERN)


def _agreement(c: Idempotency) -> list[str]:
    return agreement_sentences(c.comps)


def _sim_vs_live(c: Idempotency) -> tuple[Table | None, str]:
    table = sim_vs_live_table(c.comps, c.sim is not None or c.aslive is not None) if c.comps else None
    if c.live is None:
        return table, no_live_run(PATTERN)
    return table, ("One row per design and load point the live run measured. A live run has one value per cell, "
                   "so its values carry no interval.")


def _notes(c: Idempotency) -> list[str]:
    notes = [n for n in (seeds_note(PATTERN, c.sim.max_seeds) if c.sim else None,) if n]
    return notes + (live_notes(c.sim, c.aslive, c.live) if c.live else [])


def _latencies(c: Idempotency) -> list[LiveLatency]:
    return [LiveLatency(x.design, x.load_point, "p99 per attempt", x.live["latency_p99"].mean)
            for x in c.comps if x.measured and x.live["latency_p99"].known]


REPORT = PatternReport(
    slug=PATTERN,
    context=Idempotency.of,
    sections=(
        Section("no simulation", when=no_sim, conclusions=(_no_simulation,)),
        Section("duplicates, orphans and cost", when=has_sim,
                conclusions=(_headline, _checker, *(on("simulated", rule) for rule in (
                    said.orphan_sentence, said.load_sentence, said.cost_sentence, said.replay_sentence))),
                tables=(on("simulated", effects_table), on("simulated", cost_table)),
                figures=(_effects_figure, on("simulated", cost_figure))),
        Section("no live run", when=no_live, conclusions=(_no_live,)),
        Section("simulated versus measured", when=sim_and_live,
                conclusions=(_agreement,), figures=(lambda c: live_figure(c.comps),)),
    ),
    answer=(_no_simulation, _headline, (_checker, 2), (_agreement, 1), checks_sentence, _no_live),
    headline_figure=_effects_figure,
    notes=(_notes,),
    designs=lambda c: designs_present(c, DESIGN_TEXT),
    workload=lambda c: workload(c.data.sim, c.data.live),
    sim_vs_live=_sim_vs_live,
    invariants=lambda c: invariants(c.sim, c.data.live),
    live_latencies=_latencies,
)


def build(data: PatternData) -> Report:
    return build_report(REPORT, data)


__all__ = ["NO_LIVE", "OWN_WORKLOAD", "QUESTION", "REPORT", "View", "build"]
