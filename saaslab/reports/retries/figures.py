"""The retries report's tables and figures."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure as MplFigure

from saaslab.report import Figure, Table, figure_data_uri, fmt_num
from saaslab.reports.retries.data import STATE_COLOURS, STATES, Cell, Contention, Map

# --- tables and figures -------------------------------------------------------------------------

def contention_tables(c: Contention) -> list[Table]:
    caption = "Mean over seeds ± half-width of the 95% confidence interval (Student's t); each seed is a batch of trials."
    return [Table(title, ["clients", *c.policies],
                  [[str(n), *(c.get(p, n, metric).text() for p in c.policies)] for n in c.clients], caption=caption)
            for title, metric in (("Contention: write calls until every client succeeded", "contention_calls"),
                                  ("Contention: time to completion (ms)", "contention_completion_ms"))]


def _cell_text(cell: Cell | None) -> str:
    if cell is None or not cell.states:
        return "n/a"
    state = cell.majority
    detail = (f"{fmt_num(cell.get('meta_recovery_s').mean)} s" if state == "recovered"
              else f"{fmt_num(cell.get('meta_goodput_after_pct').mean, 0)}% served")
    return f"{state} {cell.count(state)}/{len(cell.states)} ({detail})"


def map_tables(m: Map) -> list[Table]:
    cols = ["design", "load", *(f"{t} s trigger" for t in m.triggers)]
    states = [[d, f"{lp:g}", *(_cell_text(m.cell(d, lp, t)) for t in m.triggers)]
              for d in m.designs for lp in m.loads]
    load = [[d, f"{lp:g}", *(_load_text(m.cell(d, lp, t)) for t in m.triggers)] for d in m.designs for lp in m.loads]
    return [
        Table("Metastability map: state after the spike", cols, states,
              caption="State reached by most seeds, with how many; for recovered cells the mean time from the spike's "
                      "end to recovery, otherwise the goodput share over the hold window."),
        Table("Metastability map: load that retries add", cols, load,
              caption="Attempts per request over the run, and attempts sent per second over the hold window as a "
                      "multiple of capacity (at 1x or more the server cannot drain): means over seeds."),
    ]


def _load_text(cell: Cell | None) -> str:
    if cell is None:
        return "n/a"
    amp, after = cell.get("meta_amplification"), cell.get("meta_attempt_load_after")
    return f"{fmt_num(amp.mean)} per request, {fmt_num(after.mean)}x after"


def contention_figure(c: Contention) -> Figure:
    fig = MplFigure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric, label, scale in ((axes[0], "contention_calls", "write calls (work)", 1.0),
                                     (axes[1], "contention_completion_ms", "time to completion (s)", 1000.0)):
        for p in c.policies:
            cells = [c.get(p, n, metric) for n in c.clients]
            xs = [n for n, s in zip(c.clients, cells, strict=True) if s.known]
            ys = [s.mean / scale for s in cells if s.known]
            errs = [0.0 if math.isnan(s.ci95) else s.ci95 / scale for s in cells if s.known]
            ax.errorbar(xs, ys, yerr=errs, marker="o", markersize=3, capsize=2, label=p)
        ax.set_xlabel("clients contending on one row")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    return Figure("Work and time to completion under contention", figure_data_uri(fig),
                  "Mean over seeds with 95% CI error bars; time on a log scale. Brooker's 2015 figures show the same "
                  "two quantities for his five policies.")


def map_figure(m: Map) -> Figure:
    cols = min(3, len(m.designs))
    rows = math.ceil(len(m.designs) / cols)
    fig = MplFigure(figsize=(3.4 * cols, 2.6 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    cmap = ListedColormap(list(STATE_COLOURS))
    for ax, d in zip(axes, m.designs, strict=False):
        grid = np.full((len(m.loads), len(m.triggers)), np.nan)
        for i, lp in enumerate(m.loads):
            for j, t in enumerate(m.triggers):
                cell = m.cell(d, lp, t)
                if cell is not None and cell.states:
                    grid[i, j] = STATES.index(cell.majority)
                    ax.text(j, i, f"{cell.majority[0].upper()} {cell.count(cell.majority)}/{len(cell.states)}",
                            ha="center", va="center", fontsize=8)
        ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=2.5, origin="lower", aspect="auto")
        ax.set_xticks(range(len(m.triggers)), [f"{t}" for t in m.triggers])
        ax.set_yticks(range(len(m.loads)), [f"{lp:g}" for lp in m.loads])
        ax.set_xlabel("trigger length (s)")
        ax.set_ylabel("load (x capacity)")
        ax.set_title(d, fontsize=10)
    for ax in axes[len(m.designs):]:
        ax.set_visible(False)
    return Figure("Metastability map", figure_data_uri(fig),
                  "Per design: each cell is a load and a latency-spike length, coloured by the state most seeds "
                  "reached: green R recovered, amber D still draining, red C stayed collapsed (under half the requests "
                  "served over the hold window); the fraction is how many seeds reached it.")
