"""The sharding report: which placement scheme keeps load even and moves the least data when shards are added, and
whether a tenant moves online without losing a write or blocking writes for long.

The tables, plots and conclusions come from `scenarios/sharding/` (its docstring names every metric and the
model): only the simulation has the seeds for confidence intervals across tenants, shards and skews. Its metric
names carry the cell they were measured in: `load_max_over_mean@zipf=1,tenants=1000000,shards=16`
(`scenarios.sharding.plan.cell_metric`).

The live schema (what `saaslab load sharding` writes, saaslab/live/sharding.py; the same metric names as the
simulation, so the report can set them side by side):

* `live/results.csv`: rows of the results schema with source "live", pattern "sharding", `seed` the live run's
  seed, tenant "*". A move's metrics under the mover's name (design `fenced` or `unsafe`), load point 0:
  - `write_blocked_ms` (ms): from the fence to the directory's flip (MoveState.write_blocked_us);
  - `move_duration_ms` (ms): from the move's start to its clean-up done;
  - `moved_rows` (rows): the tenant's rows on the target when the directory flipped;
  - `lost_writes` (writes): acknowledged writes on no shard once the move settled;
  - `write_latency_p99` (ms): the moved tenant's acknowledged writes during the run, HDR histogram.
  Placement metrics under the router's name (design in mod, ring, jump, rendezvous, directory):
  - `load_max_over_mean` (ratio): the busiest shard's requests over the mean per shard;
  - `moved_tenants_share` (ratio): tenants whose shard changed when a shard was added;
  - `hot_shard_p99` (ms), at the load point offered (mean shard utilisation): the busiest shard's request p99.
  A metric may carry its cell (`write_blocked_ms@rows=100000,wps=100`); without one its cell is read from the
  live run.json's `parameters`: `tenant_rows` and `write_rate` (the moved tenant's rows and writes per second),
  `tenants`, `shards` and `zipf`. Shown as trouble when present: `errors`, `timeouts`, `dropped` (requests).
* `live/check.json`: the `CheckResult`s of `reference_impl.sharding.invariants.check` over the live history and
  every shard read back, one per check.

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
from saaslab.reports.sharding import conclusions as said
from saaslab.reports.sharding.figures import (
    balance_table,
    growth_table,
    headline_figure,
    invariants,
    memory_table,
    move_table,
    queue_figure,
    queue_table,
    ring_table,
    spread_table,
)
from saaslab.reports.sharding.live import (
    Comparison,
    agreement_sentences,
    comparisons,
    live_notes,
    no_live_table,
)
from saaslab.reports.sharding.live import sim_vs_live_table as comparison_table
from saaslab.reports.sharding.setup import DESIGN_TEXT, workload
from saaslab.reports.sharding.view import NO_LIVE, PATTERN, View

QUESTION = patterns.get(PATTERN).question


class Sharding(SimAndLive[View, Comparison]):
    """The loaded runs, their views and the simulated-versus-measured cells."""

    @classmethod
    def of(cls, data: PatternData) -> Sharding:
        sim = View.of(data.sim) if data.sim and data.sim.rows else None
        live = View.of(data.live) if data.live and data.live.rows else None
        comps = comparisons(sim, live, data.live) if live is not None and data.live is not None else []
        return cls(data, sim, live, comps)


def _no_simulation(_c: Sharding) -> str:
    return no_simulation(PATTERN, "there are no confidence intervals across tenants, shards and skews")


def _no_live(_c: Sharding) -> str:
    return no_live_run(PATTERN)


def _agreement(c: Sharding) -> list[str]:
    return agreement_sentences(c.comps)


def _notes(c: Sharding) -> list[str]:
    notes = [n for n in (seeds_note(PATTERN, c.sim.max_seeds) if c.sim else None,) if n]
    return notes + (live_notes(c.live) if c.live else [])


def _latencies(c: Sharding) -> list[LiveLatency]:
    return [LiveLatency(x.design, x.load_point, x.label, x.live.mean)
            for x in c.comps if x.metric in ("write_latency_p99", "hot_shard_p99") and x.live.known]


def _sim(rule):  # type: ignore[no-untyped-def]
    return on("simulated", rule)


_balance, _hot, _growth = _sim(said.balance_sentence), _sim(said.hot_tenant_sentence), _sim(said.growth_sentence)
_ring, _queue, _move = _sim(said.ring_sentence), _sim(said.queue_sentence), _sim(said.move_sentence)
_checker, _memory = _sim(said.checker_sentence), _sim(said.memory_sentence)
_headline_figure = _sim(headline_figure)

REPORT = PatternReport(
    slug=PATTERN,
    context=Sharding.of,
    sections=(
        Section("no simulation", when=no_sim, conclusions=(_no_simulation,)),
        Section("even load", when=has_sim, conclusions=(_balance, _hot, _ring, _queue),
                tables=(_sim(balance_table), _sim(spread_table), _sim(ring_table), _sim(queue_table)),
                figures=(_headline_figure, _sim(queue_figure))),
        Section("data moved when a shard is added", when=has_sim, conclusions=(_growth, _memory),
                tables=(_sim(growth_table), _sim(memory_table))),
        Section("moving a tenant online", when=has_sim, conclusions=(_move, _checker), tables=(_sim(move_table),)),
        Section("no live run", when=no_live, conclusions=(_no_live,)),
        Section("simulated versus measured", when=lambda c: c.live is not None, conclusions=(_agreement,)),
    ),
    answer=(_no_simulation, _balance, _growth, _move, _checker, (_agreement, 1), checks_sentence, _no_live),
    headline_figure=_headline_figure,
    notes=(_notes,),
    designs=lambda c: designs_present(c, DESIGN_TEXT),
    workload=lambda c: workload(c.data.sim, c.data.live),
    sim_vs_live=sim_vs_live_rule(no_live_table, comparison_table, no_live_run(PATTERN),
                                 "One row per design, cell and metric the live run measured; a live run has one "
                                 "value per cell."),
    invariants=lambda c: invariants(c.sim, c.data.live),
    live_latencies=_latencies,
    empty=empty_without_rows(PATTERN),
)


def build(data: PatternData) -> Report:
    return build_report(REPORT, data)


__all__ = ["NO_LIVE", "QUESTION", "REPORT", "View", "build"]
