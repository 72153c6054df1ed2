"""The rate-limiting report's load-shedding section: Stripe's question, whether critical traffic keeps
flowing while lower classes are shed first as utilisation rises (scenarios/ratelimit_shedding.py names
the designs and metrics; the service runs the same `core.LoadShedder`)."""

from __future__ import annotations

from dataclasses import dataclass

from matplotlib.figure import Figure as MplFigure

from saaslab.report import Cells, Figure, RunData, Summary, Table, figure_data_uri, fmt_load, fmt_num
from scenarios.ratelimit_shedding import SHED_DESIGNS

CLASSES = ("critical", "default", "sheddable")
PRIORITY, UNIFORM, NONE = SHED_DESIGNS
KEEPS_FLOWING_PCT = 95.0
"""Critical success at or above this counts as still flowing (the issue's bar for the service test)."""


@dataclass
class ShedView(Cells):
    @classmethod
    def of(cls, run: RunData) -> ShedView | None:
        view = cls.from_run(run, SHED_DESIGNS, keep=lambda r: r.design in SHED_DESIGNS)
        return view if view.designs else None

    @property
    def top_load(self) -> float:
        return self.load_points[-1]

    def success(self, design: str, lp: float, cls_: str) -> Summary:
        return self.get(design, lp, "shed_success_pct", cls_)


def _flowing_up_to(v: ShedView, design: str) -> float | None:
    """The highest load at and below which critical success stayed at or above KEEPS_FLOWING_PCT."""
    last = None
    for lp in v.load_points:
        s = v.success(design, lp, "critical")
        if not s.known or s.mean < KEEPS_FLOWING_PCT:
            break
        last = lp
    return last


def shedding_sentences(v: ShedView) -> list[str]:
    top = v.top_load
    out = []
    if PRIORITY in v.designs:
        crit, shed = v.success(PRIORITY, top, "critical"), v.success(PRIORITY, top, "sheddable")
        upto = _flowing_up_to(v, PRIORITY)
        held = v.get(PRIORITY, top, "shed_order_held")
        flowing = (f"critical requests kept at least {fmt_num(KEEPS_FLOWING_PCT)}% success up to "
                   f"{fmt_load(upto)}x capacity" if upto is not None else
                   f"critical requests fell below {fmt_num(KEEPS_FLOWING_PCT)}% success already at "
                   f"{fmt_load(v.load_points[0])}x capacity")
        out.append(f"With priority shedding, {flowing}; at {fmt_load(top)}x, critical succeeded "
                   f"{crit.text('%')} of the time and sheddable reads {shed.text('%')}"
                   + (", shed in priority order in every seed." if held.known and held.mean == 1.0 else "."))
    others = [d for d in (UNIFORM, NONE) if d in v.designs]
    if others:
        parts = [f"{d} {v.success(d, top, 'critical').text('%')}" for d in others]
        out.append(f"At the same {fmt_load(top)}x load, critical success without priorities was "
                   f"{' and '.join(parts)}: one cap for every class, or none, fails critical requests with the rest.")
    return out


def shedding_table(v: ShedView) -> Table:
    rows = []
    for d in v.designs:
        for lp in v.load_points:
            rows.append([d, fmt_load(lp), *(v.success(d, lp, c).text("%") for c in CLASSES),
                         *(v.get(d, lp, "shed_shed_pct", c).text("%") for c in CLASSES),
                         v.get(d, lp, "shed_latency_p99_ms", "critical").text(" ms")])
    return Table("Priority load shedding: success and shed share per route class (simulated)",
                 ["design", "load (x capacity)", *(f"{c} success" for c in CLASSES),
                  *(f"{c} shed" for c in CLASSES), "critical p99"], rows,
                 caption=("One worker; offered load in multiples of its capacity, 10% critical, 30% default, 60% "
                          "sheddable requests; success = answered within the client's deadline. Mean ± 95% CI over "
                          "seeds."))


def shedding_figure(v: ShedView) -> Figure:
    fig = MplFigure(figsize=(8, 3.8), layout="constrained")
    ax = fig.add_subplot()
    styles = {PRIORITY: "-", UNIFORM: "--", NONE: ":"}
    for d in v.designs:
        for c, colour in zip(CLASSES, ("tab:green", "tab:orange", "tab:red"), strict=True):
            if d != PRIORITY and c != "critical":
                continue
            ys = [v.success(d, lp, c) for lp in v.load_points]
            ax.errorbar(v.load_points, [s.mean for s in ys], yerr=[s.ci95 if s.n > 1 else 0 for s in ys],
                        linestyle=styles[d], color=colour, marker="o", markersize=3, capsize=2, label=f"{d}: {c}")
    ax.axhline(KEEPS_FLOWING_PCT, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("offered load (x capacity)")
    ax.set_ylabel("success (% of the class's requests)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return Figure("Success per route class as load rises", figure_data_uri(fig),
                  "Priority shedding per class (solid); critical requests under a uniform cap (dashed) and no "
                  f"shedding (dotted). The grey line is {fmt_num(KEEPS_FLOWING_PCT)}%. Mean with 95% CI over seeds.")

