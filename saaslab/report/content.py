"""What a report holds once built: tables, figures and sentences, and the plotting helpers the
pattern reports share (grouped bars with CI error bars, a figure as a self-contained data URI)."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from saaslab.report.numbers import Summary


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    title: str
    data_uri: str
    caption: str = ""


class Expected(str):
    """A note about something the run did on purpose (faults injected through lab mode, the unsafe design caught, a
    quick run's single load point): a report shows it as expected. Any other note is shown as a problem to look
    into (too few seeds, a setup that differs, errors nobody injected)."""

    __slots__ = ()


@dataclass
class Report:
    """A built report: `saaslab.report.declaration.build` fills it, `saaslab.report.render` lays it out."""

    pattern: str
    question: str
    designs: dict[str, str]
    workload: list[str]
    conclusions: list[str]
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    invariants: Table | None = None
    invariants_note: str = ""
    sim_vs_live: Table | None = None
    sim_vs_live_note: str = ""
    notes: list[str] = field(default_factory=list)
    """Caveats about the data, shown beside the sources: `Expected` ones as expected, the rest as problems."""
    simulation_only: bool = False
    """The pattern has no live face: a missing live run is expected, not something to go and make."""
    answer: list[str] = field(default_factory=list)
    """At most five sentences that open the report, drawn from the conclusions."""
    headline_figure: int | None = None
    """Index into `figures` of the plot that opens the report (shown there, not again with the rest)."""
    send_lag: Table | None = None
    """The load generator's send lag beside the live latencies it sits under."""
    by_section: dict[str, list[str]] = field(default_factory=dict)
    """The conclusions again, by the name of the section that said them (notebooks show one section's)."""

    @property
    def headline(self) -> str:
        return self.conclusions[0] if self.conclusions else "No conclusion could be drawn from the data."


def grouped_bars(ax: Any, groups: Sequence[str], series: dict[str, list[Summary]], *,
                 capsize: float = 3) -> Any:
    """Grouped bars (one series per entry) with 95% CI error bars; returns the group centres.

    For the lab's bar metrics (rates, ratios, latencies, bytes), none of which can be negative: an error bar
    stops at zero instead of promising a value below it, and a mean of exactly zero gets a hollow marker on
    the axis, so a zero bar is seen as zero rather than missing (on a symlog axis it has no height at all).
    """
    import numpy as np

    x = np.arange(len(groups), dtype=float)
    width = 0.8 / max(1, len(series))
    for i, (name, summaries) in enumerate(series.items()):
        means = [s.mean if s.known else 0.0 for s in summaries]
        errs = [0.0 if math.isnan(s.ci95) else s.ci95 for s in summaries]
        lower = [min(e, max(m, 0.0)) for m, e in zip(means, errs, strict=True)]
        at = x - 0.4 + width * (i + 0.5)
        bars = ax.bar(at, means, width, yerr=[lower, errs], capsize=capsize, label=name)
        zeros = [xi for xi, s in zip(at, summaries, strict=True) if s.known and s.mean == 0]
        if zeros:
            ax.plot(zeros, [0.0] * len(zeros), linestyle="none", marker="o", markersize=4, markerfacecolor="none",
                    color=bars.patches[0].get_facecolor(), clip_on=False)
    ax.set_xticks(x, list(groups))
    return x


def use_log_scale(ax: Any, values: list[float]) -> None:
    """A log y axis when the positive values span more than a factor of 20."""
    positive = [x for x in values if x > 0 and not math.isnan(x)]
    if positive and max(positive) / min(positive) > 20:
        ax.set_yscale("log")


def figure_data_uri(fig: MplFigure, dpi: int = 110) -> str:
    """The figure as a base64 PNG data URI, rendered with the Agg canvas (no display, no pyplot state).

    Give the figure `layout="constrained"` rather than relying on a tight bounding box: that
    would draw it twice.
    """
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
