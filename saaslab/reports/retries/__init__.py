"""The retries report: backoff under contention (Brooker's experiment) and the metastability map.

Reads the rows of `scenarios/retries.py` and, when there is a live run (`saaslab load retries`), the
same experiments measured against the service: the live ranking beside the simulation's, the map's
cells tried live beside the simulated ones (`live.py`). Every conclusion is a sentence filled in
from the numbers, including whether they agree with Marc Brooker's published findings (2015 for
contention; 2022 for open systems).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saaslab import patterns
from saaslab.report import Figure, PatternData, PatternReport, Report, Section, Table, ordered
from saaslab.report import build as build_report
from saaslab.report.declaration import on
from saaslab.report.evidence import seeds_note
from saaslab.reports.retries.contention import time_sentences, work_sentences
from saaslab.reports.retries.data import META_ORDER, POLICY_ORDER, Contention, Map
from saaslab.reports.retries.figures import contention_figure, contention_tables, map_figure, map_tables
from saaslab.reports.retries.live import contention_figure as live_contention_figure
from saaslab.reports.retries.live import (
    contention_sentences,
    contention_table,
    goodput_figure,
    map_table,
    same_timeline,
)
from saaslab.reports.retries.live import map_sentences as live_map_sentences
from saaslab.reports.retries.metastability import headline, map_sentences
from saaslab.reports.retries.setup import DESIGN_TEXT, workload

PATTERN = "retries"
QUESTION = patterns.get(PATTERN).question
NO_LIVE = ("No live run yet: `saaslab load retries` runs Brooker's experiment and the metastability cells against the "
           "service with the very policy objects simulated here (reference_impl/retries/core.py).")


@dataclass
class Retries:
    """The simulated run's two experiments and the live run's; any is None when its run has none of its rows."""

    data: PatternData
    params: dict[str, Any]
    contention: Contention | None
    map: Map | None
    live_params: dict[str, Any]
    live_contention: Contention | None
    live_map: Map | None

    @classmethod
    def of(cls, data: PatternData) -> Retries:
        sim, live = data.sim, data.live
        contention, meta = (Contention.of(sim), Map.of(sim)) if sim is not None and sim.rows else (None, None)
        live_contention, live_map = (Contention.of(live), Map.of(live)) if live is not None and live.rows else (None, None)
        return cls(data, sim.parameters if sim else {}, contention if contention and contention.clients else None,
                   meta if meta and meta.designs else None, live.parameters if live else {},
                   live_contention if live_contention and live_contention.clients else None,
                   live_map if live_map and live_map.designs else None)

    @property
    def has_live(self) -> bool:
        return self.live_contention is not None or self.live_map is not None

    @property
    def comparable_maps(self) -> bool:
        return same_timeline(self.params, self.live_params)


def _empty(c: Retries) -> str | None:
    if any(r.rows for r in c.data.runs):
        return None
    run = c.data.sim
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


def _live_contention(c: Retries) -> list[str]:
    assert c.live_contention is not None
    return contention_sentences(c.contention, c.live_contention, c.params, c.live_params)


def _live_map(c: Retries) -> list[str]:
    assert c.live_map is not None
    return live_map_sentences(c.map, c.live_map, c.comparable_maps)


def _live_tables(c: Retries) -> list[Table]:
    tables = []
    if c.live_contention is not None and c.contention is not None:
        tables.append(contention_table(c.contention, c.live_contention, c.params))
    if c.live_map is not None:
        tables.append(map_table(c.map, c.live_map, c.comparable_maps))
    return tables


def _live_contention_figure(c: Retries) -> Figure | None:
    return live_contention_figure(c.contention, c.live_contention) if c.live_contention is not None else None


def _goodput_figure(c: Retries) -> Figure | None:
    return goodput_figure(c.map, c.live_map, c.comparable_maps, c.live_params) if c.live_map is not None else None


def _sim_vs_live(c: Retries) -> tuple[Table | None, str]:
    if not c.has_live:
        return None, NO_LIVE
    if c.live_contention is not None and c.contention is not None:
        return (contention_table(c.contention, c.live_contention, c.params),
                "Calls compare directly; simulated times are scaled to the service's measured write round trip.")
    return None, "The live run has no contention rows, or there is no simulation to set them beside."


def _designs(c: Retries) -> dict[str, str]:
    present = ordered({*(c.contention.policies if c.contention else ()), *(c.map.designs if c.map else ()),
                       *(c.live_map.designs if c.live_map else ()), *(("if_match", "blind_write") if c.has_live else ())},
                      (*POLICY_ORDER, *META_ORDER))
    return {d: DESIGN_TEXT.get(d, "(no description)") for d in present}


def _live_contention_when(c: Retries) -> list[str]:
    return _live_contention(c) if c.live_contention is not None else []


def _live_map_when(c: Retries) -> list[str]:
    return _live_map(c) if c.live_map is not None else []


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
        Section("simulated versus measured", when=lambda c: c.has_live,
                conclusions=(_live_contention_when, _live_map_when), tables=(_live_tables,),
                figures=(_live_contention_figure, _goodput_figure)),
    ),
    answer=(_headline, (_work, 1), (_live_contention_when, 2), (_live_map_when, 1), (_map, -1)),
    headline_figure=_contention_figure,
    notes=(_notes,),
    designs=_designs,
    workload=lambda c: workload(c.params),
    sim_vs_live=_sim_vs_live,
)


def build(data: PatternData) -> Report:
    return build_report(REPORT, data)
