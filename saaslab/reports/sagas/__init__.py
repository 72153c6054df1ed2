"""The sagas report: which coordination design keeps every checkout all-done or all-undone under participant
failures and crashes, and what each costs in latency, throughput, messages, lock hold time and time in doubt.

The tables, plots and most conclusions come from `scenarios/sagas/` (its docstring names every metric and the
model): only the simulation has the seeds for confidence intervals across loads and fault conditions. Its
metric names carry the condition they ran under: `latency_p99@fail0.05/crash1` (`scenarios.sagas.plan`).

The live schema (what `saaslab load sagas` writes, saaslab/live/sagas.py; the same metric names as the
simulation, so the report can set them side by side):

* `live/results.csv`: rows of the results schema with source "live", pattern "sagas", design in {orchestration,
  choreography, twopc, unsafe}, `seed` the live run's seed, `load_point` as in the simulation (offered checkouts
  per second over the modelled capacity, scenarios/sagas/plan.py `capacity_rps`: a live cell offered the same
  checkouts per second as the simulated one beside it), tenant "*", and the metrics
  - `latency_p50`, `latency_p99` (ms): from the POST to the order's terminal state (completed, compensated or
    failed, as GET /v1/orders reports it), through the HDR histogram;
  - `throughput` (orders/s): orders completed while the load ran, per second of it;
  - `compensated_share` (ratio, 0 to 1): orders that ended compensated, over orders accepted.
  Optional, compared when present: `messages_per_saga` (messages), `events_per_saga` (messages: stream entries
  written per order, choreography), `lock_hold_p50`, `lock_hold_p99` (ms), `in_doubt_p50`, `in_doubt_p99` (ms,
  twopc), `time_to_consistency` (ms: from a crash until every order it caught had finished, mean over crashes),
  `anomalies_per_10k` (per_10k: orders `terminal` or `all_or_nothing` flags, per 10,000). Shown as trouble
  when present: `errors`, `timeouts`, `dropped` (requests).
  A metric may carry the condition suffix the simulation uses; without one it is read under the fault
  condition of the live run's run.json: `parameters.failure_rate` (share of participant operation attempts
  made to fail) and `parameters.crash_rate` (crashes per second), both 0 when absent. `parameters.skipped`
  ({design: why}: twopc on a server without prepared transactions), `parameters.service` (the settings the
  live service ran with) and `parameters.workers` are quoted in the notes.
* `live/check.json`: the `CheckResult`s of `reference_impl.sagas.invariants.check` over the live history and
  the three databases read back, one per check (a name may carry `[<design>]`).

Without a live run the measured column reads "no live run yet" and a conclusion says how to make one.
"""

from __future__ import annotations

from saaslab import patterns
from saaslab.report import PatternData, PatternReport, Report, Section
from saaslab.report import build as build_report
from saaslab.report.declaration import (
    SimAndLive,
    designs_present,
    empty_without_rows,
    has_sim,
    no_live,
    no_sim,
    on,
    sim_vs_live_rule,
)
from saaslab.report.evidence import LiveLatency, checks_sentence, no_live_run, no_simulation, seeds_note
from saaslab.reports.sagas import conclusions as said
from saaslab.reports.sagas.figures import (
    cost_figure,
    cost_table,
    headline_figure,
    invariants,
    outcomes_table,
    recovery_table,
)
from saaslab.reports.sagas.live import (
    Comparison,
    agreement_sentences,
    comparisons,
    live_notes,
    live_run_notes,
    no_live_table,
    sim_vs_live_table,
)
from saaslab.reports.sagas.setup import DESIGN_TEXT, workload
from saaslab.reports.sagas.view import NO_LIVE, PATTERN, View, live_condition

QUESTION = patterns.get(PATTERN).question


class Sagas(SimAndLive[View, Comparison]):
    """The loaded runs, their views and the simulated-versus-measured cells."""

    @classmethod
    def of(cls, data: PatternData) -> Sagas:
        sim = View.of(data.sim) if data.sim and data.sim.rows else None
        live = View.of(data.live, live_condition(data.live)) if data.live and data.live.rows else None
        return cls(data, sim, live, comparisons(sim, live) if live is not None else [])


def _no_simulation(_c: Sagas) -> str:
    return no_simulation(PATTERN, "there are no confidence intervals across loads and faults")


def _no_live(_c: Sagas) -> str:
    return no_live_run(PATTERN)


def _agreement(c: Sagas) -> list[str]:
    return agreement_sentences(c.comps)


def _notes(c: Sagas) -> list[str]:
    notes = [n for n in (seeds_note(PATTERN, c.sim.max_seeds) if c.sim else None,) if n]
    live = live_notes(c.sim, c.live) + live_run_notes(c.data.live.parameters) if c.live and c.data.live else []
    return notes + live


def _latencies(c: Sagas) -> list[LiveLatency]:
    return [LiveLatency(x.design, x.load_point, "p99 POST to terminal", x.live.mean)
            for x in c.comps if x.metric == "latency_p99" and x.live.known]


_headline, _checker = on("simulated", said.headline), on("simulated", said.checker_sentence)
_locks, _recovery = on("simulated", said.lock_sentence), on("simulated", said.recovery_sentence)
_headline_figure = on("simulated", headline_figure)

REPORT = PatternReport(
    slug=PATTERN,
    context=Sagas.of,
    sections=(
        Section("no simulation", when=no_sim, conclusions=(_no_simulation,)),
        Section("all-done or all-undone, and at what cost", when=has_sim,
                conclusions=(_headline, _checker, on("simulated", said.cost_sentence), _locks, _recovery,
                             on("simulated", said.doubt_sentence)),
                tables=(on("simulated", outcomes_table), on("simulated", cost_table), on("simulated", recovery_table)),
                figures=(_headline_figure, on("simulated", cost_figure))),
        Section("no live run", when=no_live, conclusions=(_no_live,)),
        Section("simulated versus measured", when=lambda c: c.live is not None, conclusions=(_agreement,)),
    ),
    answer=(_no_simulation, _headline, (_locks, 1), (_recovery, 1), (_agreement, 1), checks_sentence, _no_live),
    headline_figure=_headline_figure,
    notes=(_notes,),
    designs=lambda c: designs_present(c, DESIGN_TEXT),
    workload=lambda c: workload(c.data.sim, c.data.live),
    sim_vs_live=sim_vs_live_rule(no_live_table, sim_vs_live_table, no_live_run(PATTERN),
                                 "One row per design, load point and metric the live run measured; a live run has "
                                 "one value per cell."),
    invariants=lambda c: invariants(c.sim, c.data.live),
    live_latencies=_latencies,
    empty=empty_without_rows(PATTERN),
)


def build(data: PatternData) -> Report:
    return build_report(REPORT, data)


__all__ = ["NO_LIVE", "QUESTION", "REPORT", "View", "build"]
