"""The failover report: when the primary dies, pauses or is cut off, how long nobody can write, how many
acknowledged writes are lost and whether anything writes to two primaries, per replication design; what the
detection timeout trades (false failovers) and what each manager's timers cost per incident and per year.

The tables, plots and most conclusions come from `scenarios/failover/` (its docstring names every metric and the
model): only the simulation has the seeds for confidence intervals across timers, faults, lags and rates. Its
metric names carry the condition they ran under: `writes_lost@partition5s/lab/lag1ms`
(`scenarios.failover.plan.Condition`: fault and how long it was held, timers, replication lag).

The live schema (what the drills write, `saaslab failover drill`, docs/contract.md "Failover"; the same metric
names as the simulation, which are the names `reference_impl.failover.invariants.rows` gives the checker's
verdict, so both faces can write `rows(verdict)` as they are):

* `live/results.csv`: rows of the results schema with source "live", pattern "failover", design in {async, sync,
  unsafe}, `seed` the drill's seed, any `load_point` (the comparison reads the simulation at its reference write
  rate), tenant "*", and per drill
  - `unavailability` (s): the checker's window, first failed write after the fault to the first acknowledged one;
  - `failover_s` (s): from the fault to the replica's promotion (DrillResult.failover_s);
  - `writes_lost` (count): acknowledged and absent after recovery; `lost_fraction` (ratio) of the acknowledged;
  - `split_brain_writes` (count): acknowledged while two primaries took writes;
  - `writes_unacknowledged_present`, `stale_reads` (count); optional: `writes_total`, `writes_acknowledged`,
    `writes_survivors`, `longest_ack_gap` (s). Shown as trouble when present: `errors`, `timeouts` (requests).
  A metric carries the fault it ran under as the simulation's suffix does, at least `@<fault>` (`writes_lost@kill`,
  `unavailability@partition`); parts left out (the hold `<x>s`, `/<timers>`, `/lag<ms>ms`) are read from the
  live run.json's `parameters`: `fault`, `hold_s`, `timers` (a preset name of reference_impl/failover/core.py)
  and `lag_ms`, else a drill's: the lab's timers, held ttl + 2 loop_wait, 1 ms of lag.
* `live/check.json`: the `CheckResult`s of `reference_impl.failover.invariants.check` over the drills' histories,
  one per check (a name may carry `[<design>]`).

Without a live run the measured column reads "no live run yet" and a conclusion says how to make one.
"""

from __future__ import annotations

from saaslab import patterns
from saaslab.report import PatternData, PatternReport, Report, Section, Table
from saaslab.report import build as build_report
from saaslab.report.declaration import (
    SimAndLive,
    designs_present,
    empty_without_rows,
    has_sim,
    no_sim,
    on,
    sim_vs_live_rule,
)
from saaslab.report.evidence import checks_sentence, no_simulation, seeds_note
from saaslab.reports.failover import conclusions as said
from saaslab.reports.failover.figures import (
    headline_figure,
    invariants,
    loss_figure,
    loss_table,
    map_figure,
    map_tables,
    rate_table,
    timers_table,
)
from saaslab.reports.failover.live import (
    Comparison,
    agreement_sentences,
    comparisons,
    live_notes,
    no_live_table,
    sim_vs_live_table,
)
from saaslab.reports.failover.setup import DESIGN_TEXT, workload
from saaslab.reports.failover.view import NO_LIVE, PATTERN, View, live_defaults
from scenarios.failover.plan import INCIDENTS_PER_YEAR

QUESTION = patterns.get(PATTERN).question


class Failover(SimAndLive[View, Comparison]):
    """The loaded runs, their views and the simulated-versus-measured cells."""

    @classmethod
    def of(cls, data: PatternData) -> Failover:
        sim = View.of(data.sim) if data.sim and data.sim.rows else None
        live = View.of(data.live, live_defaults(data.live)) if data.live and data.live.rows else None
        return cls(data, sim, live, comparisons(sim, live) if live is not None else [])

    @property
    def incidents(self) -> float:
        params = self.data.sim.parameters if self.data.sim else {}
        return float((params.get("timer_presets") or {}).get("incidents_per_year", INCIDENTS_PER_YEAR))


def no_live_sentence() -> str:
    return (f"No live run yet: `saaslab {PATTERN} drill --all` runs every design against kill, pause and partition "
            f"on real PostgreSQL servers and writes {PATTERN}/live/ in the results folder; then `saaslab report "
            f"{PATTERN}` fills in the measured column.")


def _no_simulation(_c: Failover) -> str:
    return no_simulation(PATTERN, "there are no confidence intervals across timers, faults, lags and rates")


def _no_live(c: Failover) -> str | None:
    return no_live_sentence() if c.live is None else None


def _agreement(c: Failover) -> list[str]:
    return agreement_sentences(c.comps)


def _notes(c: Failover) -> list[str]:
    notes = [n for n in (seeds_note(PATTERN, c.sim.max_seeds) if c.sim else None,) if n]
    return notes + (live_notes(c.live) if c.live else [])


def _timers(c: Failover) -> list[str]:
    return said.timers_sentences(c.simulated, c.incidents)


def _timers_table(c: Failover) -> Table | None:
    return timers_table(c.simulated, c.incidents)


_loss, _split = on("simulated", said.loss_sentences), on("simulated", said.split_brain_sentence)
_map, _sync_wait = on("simulated", said.map_sentences), on("simulated", said.sync_wait_sentence)
_headline_figure = on("simulated", headline_figure)

REPORT = PatternReport(
    slug=PATTERN,
    context=Failover.of,
    sections=(
        Section("no simulation", when=no_sim, conclusions=(_no_simulation,)),
        Section("unavailability per incident and per year", when=has_sim, conclusions=(_timers, _sync_wait),
                tables=(_timers_table,), figures=(_headline_figure,)),
        Section("lost and split-brain writes", when=has_sim, conclusions=(_loss, _split),
                tables=(on("simulated", loss_table), on("simulated", rate_table)),
                figures=(on("simulated", loss_figure),)),
        Section("detection timeout against false failovers", when=has_sim, conclusions=(_map,),
                tables=(on("simulated", map_tables),), figures=(on("simulated", map_figure),)),
        Section("no live run", when=lambda c: c.live is None, conclusions=(_no_live,)),
        Section("simulated versus measured", when=lambda c: c.live is not None, conclusions=(_agreement,)),
    ),
    answer=(_no_simulation, (_timers, 1), _loss, _split, (_agreement, 1), (_map, 1), checks_sentence, _no_live),
    headline_figure=_headline_figure,
    notes=(_notes,),
    designs=lambda c: designs_present(c, DESIGN_TEXT),
    workload=lambda c: workload(c.data.sim, c.data.live),
    sim_vs_live=sim_vs_live_rule(no_live_table, sim_vs_live_table, no_live_sentence(),
                                 "One row per drill (design and fault) and metric the live run measured, with the "
                                 "simulation of the same fault."),
    invariants=lambda c: invariants(c.sim, c.data.live),
    empty=empty_without_rows(PATTERN),
)


def build(data: PatternData) -> Report:
    return build_report(REPORT, data)


__all__ = ["NO_LIVE", "QUESTION", "REPORT", "View", "build"]
