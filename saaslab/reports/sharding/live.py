"""The sharding report's simulated-versus-measured comparison: per live cell and metric, the simulation's nearest
cell of the same design beside the measured value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from saaslab.report import MISSING, RunData, Summary, Table, fmt_load, gap_cell
from saaslab.report.agreement import NEAREST, agrees, simulated_text
from saaslab.report.agreement import agreement_sentences as shared_agreement
from saaslab.report.evidence import live_trouble_notes
from saaslab.reports.sharding.view import MOVERS, NO_LIVE, PATTERN, View, big
from scenarios.sharding.plan import PLACEMENT, split_metric

COMPARED = {
    "write_blocked_ms": ("writes blocked (ms)", ("rows", "wps")),
    "move_duration_ms": ("move duration (ms)", ("rows", "wps")),
    "moved_rows": ("rows moved", ("rows", "wps")),
    "lost_writes": ("acknowledged writes lost", ("rows", "wps")),
    "write_latency_p99": ("write p99 (ms)", ("rows", "wps")),
    "load_max_over_mean": ("hottest shard / mean load", ("zipf", "tenants", "shards")),
    "moved_tenants_share": ("share of tenants moved on growth", ("tenants", "shards")),
    "hot_shard_p99": ("hottest shard p99 (ms)", ("zipf", "tenants", "shards")),
}
"""metric -> (label, the cell keys it is measured in)."""
PARAMETER_OF = {"rows": "tenant_rows", "wps": "write_rate", "zipf": "zipf", "tenants": "tenants", "shards": "shards"}
"""A cell key -> the live run.json parameter it is read from when the live metric carries no cell."""


@dataclass
class Comparison:
    design: str
    load_point: float
    metric: str
    label: str
    cell: dict[str, float]
    sim_cell: dict[str, float] | None
    sim: Summary
    live: Summary

    def agrees(self) -> bool | None:
        return agrees(self.sim, self.live)

    @property
    def where(self) -> str:
        return ", ".join(f"{k} {big(v) if v >= 1000 else f'{v:g}'}" for k, v in self.cell.items()) or "as run"


def live_cell(metric: str, keys: tuple[str, ...], parameters: Mapping[str, object]) -> dict[str, float]:
    """The cell of a live metric: its own suffix, else the run.json parameters named in `PARAMETER_OF`."""
    _base, cell = split_metric(metric)
    if cell:
        return cell
    out = {}
    for k in keys:
        try:
            out[k] = float(parameters[PARAMETER_OF[k]])  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            continue
    return out


def comparisons(sim: View | None, live: View, run: RunData) -> list[Comparison]:
    out = []
    for (design, lp, _tenant, metric), seeds in sorted(live.values.items()):
        base, _ = split_metric(metric)
        if base not in COMPARED or not seeds:
            continue
        label, keys = COMPARED[base]
        cell = live_cell(metric, keys, run.parameters)
        measured = Summary.of(seeds.values())
        simulated, sim_cell = MISSING, None
        if sim is not None:
            sim_cell = sim.nearest(design, base, cell)
            if sim_cell is not None:
                loads = sim.loads_of(base)
                sim_lp = min(loads, key=lambda x: abs(x - lp)) if lp != PLACEMENT and loads else PLACEMENT
                simulated = sim.at(design, base, sim_lp, **sim_cell)
        out.append(Comparison(design, lp, base, label, cell, sim_cell, simulated, measured))
    return out


def sim_vs_live_table(comps: list[Comparison], sim_present: bool) -> Table:
    rows = []
    for x in comps:
        exact = x.sim_cell is not None and all(x.sim_cell.get(k) == v for k, v in x.cell.items())
        sim_cell = simulated_text(x.sim, not (exact and x.cell), sim_present)
        rows.append([x.design, x.where, x.label, sim_cell, x.live.text(), gap_cell(x.sim, x.live)])
    return Table("Simulated versus measured", ["design", "cell", "metric", "simulated", "measured", "gap"], rows,
                 caption=("Simulated: mean ± 95% CI over seeds in the live run's cell (marked" + NEAREST + ": the "
                          "nearest cell the simulation swept). A live run has one value per cell. gap = (measured − "
                          "simulated) / simulated."))


def agreement_sentences(comps: list[Comparison]) -> list[str]:
    return shared_agreement(
        comps, lambda x: f"{x.design} {x.label} ({x.where}: simulated {x.sim.text()}, measured {x.live.text()})",
        nothing_shared="The live run shares no (design, metric) with the simulation, so the two cannot be compared.")


def live_notes(live: View) -> list[str]:
    return live_trouble_notes(lambda d, lp, m: live.get(d, lp, m), live.designs, live.load_points)


def no_live_table(sim: View) -> Table:
    """Without a live run: the move's simulated side of the comparison, the measured column waiting for one."""
    rows = []
    for d in [m for m in MOVERS if m in sim.designs]:
        cells = sim.cells("write_blocked_ms", d)
        if not cells:
            continue
        c = cells[len(cells) // 2]
        where = f"rows {big(c['rows'])}, wps {c['wps']:g}"
        for metric, (label, _keys) in COMPARED.items():
            s = sim.at(d, metric, **c)
            if s.known:
                rows.append([d, where, label, s.text(), NO_LIVE, "n/a"])
    return Table("Simulated versus measured", ["design", "cell", "metric", "simulated", "measured", "gap"], rows,
                 caption=(f"No live run yet: `saaslab load {PATTERN}` measures these; the simulated column is the "
                          f"move sweep's middle cell, mean ± 95% CI over seeds (load point {fmt_load(PLACEMENT)})."))
