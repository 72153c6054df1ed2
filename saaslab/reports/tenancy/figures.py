"""The tenancy report's result tables and figures."""

from __future__ import annotations

from matplotlib.figure import Figure as MplFigure

from saaslab.report import (
    MISSING,
    Figure,
    Table,
    figure_data_uri,
    fmt_load,
    grouped_bars,
    load_key,
    use_log_scale,
)
from saaslab.reports.tenancy.view import NOISY, RESULT_METRICS, View

# --- tables and figures -------------------------------------------------------------------------

def result_tables(v: View) -> list[Table]:
    source = "simulated" if v.run.source == "sim" else "measured"
    tables = []
    for lp in v.load_points:
        rows = []
        for d in v.designs:
            if not v.seeds.get((d, lp)):
                continue
            cells = [v.get(d, lp, m).text("x" if m == "quiet_p99_vs_solo" else "") for m, _ in RESULT_METRICS]
            rows.append([d, *cells, str(v.seeds[(d, lp)])])
        tables.append(Table(f"Load {fmt_load(lp)} of capacity ({source})",
                            ["design", *(label for _, label in RESULT_METRICS), "seeds"], rows,
                            caption="Mean ± half-width of the 95% confidence interval over seeds (Student's t)."))
    return tables


def ratio_figure(primary: View, live: View | None) -> Figure:
    """Quiet p99 / solo by load point and design; `live`, when given, is drawn over the bars."""
    fig = MplFigure(figsize=(8, 4.2), layout="constrained")
    ax = fig.add_subplot()
    series = {d: [primary.get(d, lp, "quiet_p99_vs_solo") for lp in primary.load_points] for d in primary.designs}
    x = grouped_bars(ax, [fmt_load(lp) for lp in primary.load_points], series)
    values = [s.mean for ss in series.values() for s in ss if s.known]
    if live is not None:
        width = 0.8 / max(1, len(primary.designs))
        label = "measured (live)"
        for i, d in enumerate(primary.designs):
            for j, lp in enumerate(primary.load_points):
                s = live.get(d, lp, "quiet_p99_vs_solo")
                if s.known:
                    ax.plot(x[j] - 0.4 + width * (i + 0.5), s.mean, "kD", markersize=6, label=label)
                    values.append(s.mean)
                    label = "_nolegend_"
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="solo (1x)")
    use_log_scale(ax, [*values, 1.0])
    ax.set_xlabel("offered load before the burst (fraction of capacity)")
    ax.set_ylabel("quiet tenants' p99 / solo p99")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    source = "simulated" if primary.run.source == "sim" else "measured"
    caption = (f"Bars: {source} mean over seeds with 95% CI error bars; 1x means the burst did not hurt the "
               "quiet tenants at all.")
    if live is not None:
        caption += " Diamonds: the live run."
    return Figure("Quiet tenants' p99 relative to solo", figure_data_uri(fig), caption)


def tenant_figure(v: View, lp: float) -> Figure:
    tenants = sorted({t for (_, load, t) in v.tenant_p99 if load == load_key(lp)}, key=lambda t: (t != NOISY, t))
    fig = MplFigure(figsize=(8, 4.2), layout="constrained")
    ax = fig.add_subplot()
    series = {d: [v.tenant_p99.get((d, load_key(lp), t), MISSING) for t in tenants] for d in v.designs}
    grouped_bars(ax, tenants, series)
    use_log_scale(ax, [s.mean for ss in series.values() for s in ss if s.known])
    ax.set_xlabel("tenant")
    ax.set_ylabel("p99 latency (ms)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return Figure(f"Per-tenant p99 at load {fmt_load(lp)}", figure_data_uri(fig),
                  "Mean over seeds with 95% CI error bars. The noisy tenant bursts; the four quiet ones do not.")
