"""The tenancy report: which scheduler protects quiet tenants from a noisy neighbour.

Reads the rows of `scenarios/tenancy.py` (simulated) and `saaslab load tenancy` (measured). The
tables and plots come from the simulation when there is one (it has the seeds for confidence
intervals) and from the live run otherwise; the live run is then set beside the simulation for
every (design, load point) it measured. Every conclusion is a sentence filled in from those numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from saaslab import patterns
from saaslab.report import PatternData, PatternReport, Report, RunData, Section, Table
from saaslab.report import build as build_report
from saaslab.report.declaration import no_live, on, on_sim_and_live, sim_and_live
from saaslab.report.evidence import LiveLatency, checks_sentence, seeds_note
from saaslab.report.numbers import fmt_list
from saaslab.reports.tenancy import conclusions as said
from saaslab.reports.tenancy import live as compared
from saaslab.reports.tenancy.figures import ratio_figure, result_tables, tenant_figure
from saaslab.reports.tenancy.setup import designs, workload
from saaslab.reports.tenancy.view import RESULT_METRICS, View

PATTERN = "tenancy"
QUESTION = patterns.get(PATTERN).question


@dataclass
class Tenancy:
    """The loaded runs and their views; `primary` is the simulation when there is one, else the live run."""

    data: PatternData
    primary: View
    sim: View | None
    live: View | None

    @classmethod
    def of(cls, data: PatternData) -> Tenancy:
        run = data.sim or data.live
        assert run is not None  # load_pattern guarantees one source
        return cls(data, View.of(run), View.of(data.sim) if data.sim else None,
                   View.of(data.live) if data.live else None)

    @property
    def primary_run(self) -> RunData:
        return self.primary.run


NO_LIVE = (f"No live run yet, so the simulation is not checked against measurement: run "
           f"`saaslab load {PATTERN} --quick`, then `saaslab report {PATTERN}`.")


def _empty(c: Tenancy) -> str | None:
    if c.primary.load_points:
        return None
    run = c.primary_run
    return f"The {run.source} results in {run.directory} have no rows, so there is nothing to compare."


def _each_load(c: Tenancy) -> list[str]:
    return [said.load_sentence(c.primary, lp) for lp in c.primary.load_points]


_winner, _separation = on("primary", said.winner_sentence), on("primary", said.separation_sentence)
_agreement = on_sim_and_live(compared.agreement_sentences)


def _cost(c: Tenancy) -> str | None:
    return said.cost_sentence(c.primary, c.primary.middle_load)


def _jain(c: Tenancy) -> str | None:
    return said.jain_sentence(c.primary, c.primary.middle_load)


def _goodput(c: Tenancy) -> str | None:
    return said.goodput_sentence(c.primary, c.primary.load_points[-1], c.primary_run.parameters.get("slo_ms"))


def _no_live(_c: Tenancy) -> str:
    return NO_LIVE


def _calibration(c: Tenancy) -> str | None:
    assert c.sim is not None and c.live is not None
    return compared.calibration_sentence(c.sim.run.parameters, c.live)


def _ratio_figure(c: Tenancy):  # type: ignore[no-untyped-def]
    return ratio_figure(c.primary, c.live if c.sim else None)


def _tenant_figure(c: Tenancy):  # type: ignore[no-untyped-def]
    return tenant_figure(c.primary, c.primary.middle_load)


def _sim_vs_live(c: Tenancy) -> tuple[Table | None, str]:
    if c.live is None:
        return None, NO_LIVE
    if c.sim is None:
        return None, f"No simulation to compare the live run with: run `saaslab sim {PATTERN}`."
    return compared.sim_vs_live_table(c.sim, c.live), (
        "One row per design, load point and metric the live run measured. A live run usually has one seed per "
        "design and load point, so its values carry no interval.")


def _source_note(c: Tenancy) -> str | None:
    if c.sim is None:
        return ("There is no simulation, so the tables and plots show the measured run alone: "
                f"run `saaslab sim {PATTERN}` for the seeded comparison with confidence intervals.")
    return seeds_note(PATTERN, c.sim.max_seeds)


def _live_notes(c: Tenancy) -> list[str]:
    return compared.live_notes(c.data.sim, c.data.live) if c.data.live is not None else []


def _missing_metrics(c: Tenancy) -> str | None:
    missing = [label for m, label in RESULT_METRICS if not any(k[2] == m for k in c.primary.per_run)]
    if not missing:
        return None
    return f"The {c.primary_run.source} rows have no {fmt_list(missing)}; those cells read n/a."


def _latencies(c: Tenancy) -> list[LiveLatency]:
    """The measured p99s of the comparison: the quiet tenants' and the noisy one's, per design and load."""
    assert c.live is not None
    return [LiveLatency(d, lp, label, s.mean)
            for lp in c.live.load_points for d in c.live.designs if c.live.seeds.get((d, lp))
            for metric, label in (("quiet_p99", "quiet p99"), ("noisy_p99", "noisy p99"))
            if (s := c.live.get(d, lp, metric)).known]


REPORT = PatternReport(
    slug=PATTERN,
    context=Tenancy.of,
    empty=_empty,
    sections=(
        Section("noisy neighbour", conclusions=(_winner, _each_load, _separation, _cost, _jain, _goodput),
                tables=(on("primary", result_tables),), figures=(_ratio_figure, _tenant_figure)),
        Section("no live run", when=no_live, conclusions=(_no_live,)),
        Section("simulated versus measured", when=sim_and_live,
                conclusions=(_agreement, on_sim_and_live(compared.same_seed_sentence),
                             on_sim_and_live(compared.baseline_sentence), _calibration)),
    ),
    answer=(_winner, (_separation, 2), (_agreement, 1), _no_live, checks_sentence),
    headline_figure=_ratio_figure,
    notes=(_source_note, _live_notes, _missing_metrics),
    designs=lambda c: designs(c.primary_run.parameters, c.primary.designs),
    workload=lambda c: workload(c.data.sim, c.data.live),
    sim_vs_live=_sim_vs_live,
    live_latencies=_latencies,
)


def build(data: PatternData) -> Report:
    return build_report(REPORT, data)
