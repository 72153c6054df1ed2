"""The idempotency report's tables and figures."""

from __future__ import annotations

from matplotlib.figure import Figure as MplFigure

from saaslab.report import MISSING, Figure, Table, figure_data_uri, fmt_load, grouped_bars
from saaslab.reports.idempotency.live import Comparison
from saaslab.reports.idempotency.view import View

# --- tables and figures -----------------------------------------------------------------------------

def effects_table(v: View) -> Table:
    rows = []
    for d in v.designs:
        for lp in v.load_points:
            if not v.has(d, lp):
                continue
            per_lp = [v.seeds(d, lp, c) for c in ("exactly_one_effect", "no_orphan_charges")]
            checks = [f"{sum(1 for x in s.values() if x >= 0.5)}/{len(s)}" if s else "n/a" for s in per_lp]
            rows.append([d, fmt_load(lp), v.get(d, lp, "payments").text(), v.get(d, lp, "duplicates_per_10k").text(),
                         v.get(d, lp, "orphans_per_10k").text(), v.get(d, lp, "completed_by_completer_per_10k").text(),
                         v.get(d, lp, "crashes").text(), *checks])
    return Table("Duplicate and orphan effects (simulated)",
                 ["design", "load", "payments per run", "duplicates per 10k", "orphans per 10k",
                  "finished by the completer per 10k", "worker crashes per run", "exactly_one_effect held",
                  "no_orphan_charges held"], rows,
                 caption=("Per 10,000 logical payments. Duplicates: extra charges or payment rows; orphans: charges "
                          "without their payment row after the completer. 'Held': runs (seeds) where the check held. "
                          "Mean ± 95% CI over seeds."))


def cost_table(v: View) -> Table:
    rows = []
    for d in v.designs:
        for lp in v.load_points:
            if not v.has(d, lp):
                continue
            rows.append([d, fmt_load(lp), v.get(d, lp, "conflicts_pct").text("%"), v.get(d, lp, "replays_pct").text("%"),
                         v.get(d, lp, "timeouts_pct").text("%"), v.get(d, lp, "retries_per_request").text(),
                         v.get(d, lp, "gave_up_pct").text("%"), v.get(d, lp, "latency_p99").text(" ms"),
                         v.get(d, lp, "payment_latency_p99").text(" ms")])
    return Table("What the protection costs (simulated)",
                 ["design", "load", "409 conflicts", "replays", "client timeouts", "retries per payment", "gave up",
                  "p99 per attempt", "p99 per payment"], rows,
                 caption=("Conflicts, replays and timeouts: share of attempts. Gave up: payments whose clients ran out "
                          "of attempts without a 201 or 402. p99 per attempt: answered attempts; per payment: from the "
                          "first send to the first 201 or 402. Mean ± 95% CI over seeds."))


def effects_figure(v: View) -> Figure:
    fig = MplFigure(figsize=(10, 3.8), layout="constrained")
    loads = [fmt_load(lp) for lp in v.load_points]
    for i, (metric, title) in enumerate((("duplicates_per_10k", "duplicate effects"),
                                         ("orphans_per_10k", "charges without a payment row"))):
        ax = fig.add_subplot(1, 2, i + 1)
        grouped_bars(ax, loads, {d: [v.get(d, lp, metric) for lp in v.load_points] for d in v.designs})
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("offered payments (x capacity)")
        ax.set_ylabel("per 10,000 payments")
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    return Figure("Duplicates and orphans by design and load", figure_data_uri(fig),
                  "Mean over seeds with 95% CI error bars, on a scale linear up to 10 and logarithmic above; a "
                  "missing bar is zero.")


def cost_figure(v: View) -> Figure:
    fig = MplFigure(figsize=(10, 3.8), layout="constrained")
    loads = [fmt_load(lp) for lp in v.load_points]
    for i, (metric, title, label) in enumerate((("latency_p99", "p99 per answered attempt", "ms"),
                                                ("retries_per_request", "retries per payment", "retries"))):
        ax = fig.add_subplot(1, 2, i + 1)
        grouped_bars(ax, loads, {d: [v.get(d, lp, metric) for lp in v.load_points] for d in v.designs})
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("offered payments (x capacity)")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    return Figure("What the protection costs", figure_data_uri(fig),
                  "Mean over seeds with 95% CI error bars. Past capacity, timeouts feed retries.")


def live_figure(comps: list[Comparison]) -> Figure:
    fig = MplFigure(figsize=(8, 3.8), layout="constrained")
    ax = fig.add_subplot()
    shown = [c for c in comps if c.measured and c.live["duplicates_per_10k"].known]
    groups = [f"{c.design}\n{fmt_load(c.load_point)}" for c in shown]
    grouped_bars(ax, groups, {"simulated": [c.sim.get("duplicates_per_10k", MISSING) for c in shown],
                              "measured": [c.live["duplicates_per_10k"] for c in shown]})
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("design and offered payments (x capacity)")
    ax.set_ylabel("duplicates per 10,000 payments")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return Figure("Duplicates, simulated and measured", figure_data_uri(fig),
                  "Per design and load point the live run measured; simulated bars carry the 95% CI over seeds.")
