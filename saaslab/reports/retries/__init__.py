"""The retries report: backoff under contention (Brooker's experiment) and the metastability map.

Reads the rows of `scenarios/retries.py`. Retries is a simulation-only pattern: there is no live
face, so the report says so instead of showing an empty simulated-versus-measured table. Every
conclusion is a sentence filled in from the numbers, including whether they agree with Marc
Brooker's published findings (2015 for contention; 2022 for open systems).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saaslab import patterns
from saaslab.report import PatternData, PatternReport, Report, Section, ordered
from saaslab.report import build as build_report
from saaslab.report.declaration import on
from saaslab.report.evidence import seeds_note
from saaslab.reports.retries.contention import time_sentences, work_sentences
from saaslab.reports.retries.data import META_ORDER, POLICY_ORDER, Contention, Map
from saaslab.reports.retries.figures import contention_figure, contention_tables, map_figure, map_tables
from saaslab.reports.retries.metastability import headline, map_sentences
from saaslab.reports.retries.setup import DESIGN_TEXT, workload

PATTERN = "retries"
QUESTION = patterns.get(PATTERN).question
SIM_ONLY = ("Retries is a simulation-only pattern: there is no live face to measure, so there is no simulated-versus-"
            "measured table. The client cores it simulates (reference_impl/retries/core.py) are the ones the load "
            "harness retries with.")
NO_INVARIANTS = ("No invariant checks: a simulation-only pattern records no live history and keeps no state in "
                 "PostgreSQL or Redis to read back.")


@dataclass
class Retries:
    """The simulated run's two experiments; either is None when the run has none of its rows."""

    data: PatternData
    params: dict[str, Any]
    contention: Contention | None
    map: Map | None

    @classmethod
    def of(cls, data: PatternData) -> Retries:
        run = data.sim
        if run is None or not run.rows:
            return cls(data, run.parameters if run else {}, None, None)
        contention, meta = Contention.of(run), Map.of(run)
        return cls(data, run.parameters, contention if contention.clients else None, meta if meta.designs else None)


def _empty(c: Retries) -> str | None:
    run = c.data.sim
    if run is not None and run.rows:
        return None
    where = f"in {run.directory} " if run else ""
    return f"There are no simulated results {where}to report on: run `saaslab sim {PATTERN}` first."


def _headline(c: Retries) -> str | None:
    return headline(c.contention, c.map)


_work, _time = on("contention", work_sentences), on("contention", time_sentences)
_contention_figure = on("contention", contention_figure)


def _map(c: Retries) -> list[str]:
    assert c.map is not None
    m = c.params.get("metastability") or {}
    return map_sentences(c.map, m.get("recovery_s"), m.get("recovered_share"), m.get("collapsed_share"))


def _notes(c: Retries) -> list[str]:
    seeds = max(x.seeds for x in (c.contention, c.map) if x is not None) if (c.contention or c.map) else 0
    notes = [n for n in (seeds_note(PATTERN, seeds),) if n]
    if c.contention is None:
        notes.append("The run has no contention rows, so Brooker's experiment is not reported.")
    if c.map is None:
        notes.append("The run has no metastability rows, so there is no map.")
    return notes


def _designs(c: Retries) -> dict[str, str]:
    present = ordered({*(c.contention.policies if c.contention else ()), *(c.map.designs if c.map else ())},
                      (*POLICY_ORDER, *META_ORDER))
    return {d: DESIGN_TEXT.get(d, "(no description)") for d in present}


REPORT = PatternReport(
    slug=PATTERN,
    context=Retries.of,
    empty=_empty,
    sections=(
        Section("the answer", conclusions=(_headline,)),
        Section("contention", when=lambda c: c.contention is not None, conclusions=(_work, _time),
                tables=(on("contention", contention_tables),), figures=(_contention_figure,)),
        Section("metastability", when=lambda c: c.map is not None, conclusions=(_map,),
                tables=(on("map", map_tables),), figures=(on("map", map_figure),)),
    ),
    answer=(_headline, (_work, 1), (_work, -1), (_time, 1), (_map, -1)),
    headline_figure=_contention_figure,
    notes=(_notes,),
    designs=_designs,
    workload=lambda c: workload(c.params),
    sim_vs_live=lambda _c: (None, SIM_ONLY),
    invariants=lambda _c: (None, NO_INVARIANTS),
)


def build(data: PatternData) -> Report:
    return build_report(REPORT, data)
