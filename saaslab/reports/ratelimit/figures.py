"""The rate-limiting report's figures."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure as MplFigure

from saaslab.report import Figure, figure_data_uri, fmt_load, grouped_bars
from saaslab.reports.ratelimit.conclusions import memory
from saaslab.reports.ratelimit.live import Comparison
from saaslab.reports.ratelimit.view import DEFAULT_PROMISE, PROMISED_WINDOW_RATIO, UNSAFE, View, order

# --- figures --------------------------------------------------------------------------------------

def accuracy_figure(v: View) -> Figure:
    fig = MplFigure(figsize=(9, 3.8), layout="constrained")
    loads = [fmt_load(lp) for lp in v.load_points]
    for i, (metric, title) in enumerate((("accuracy_false_admit_pct", "false admits"),
                                         ("accuracy_false_reject_pct", "false rejects"))):
        ax = fig.add_subplot(1, 2, i + 1)
        grouped_bars(ax, loads, {d: [v.get(d, lp, metric) for lp in v.load_points] for d in v.strict})
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("offered rate (x limit)")
        ax.set_ylabel("percent of requests")
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    return Figure("Wrong decisions against an exact sliding log", figure_data_uri(fig),
                  "Mean over seeds with 95% CI error bars; the exact sliding log sits at zero on both.")


def boundary_figure(v: View) -> Figure:
    fig = MplFigure(figsize=(8, 3.8), layout="constrained")
    ax = fig.add_subplot()
    grouped_bars(ax, [fmt_load(lp) for lp in v.load_points],
          {d: [v.get(d, lp, "boundary_burst_ratio") for lp in v.load_points] for d in v.designs})
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="the limit")
    ax.axhline(2.0, color="firebrick", linestyle=":", linewidth=1, label="twice the limit")
    ax.set_xlabel("flood size (x limit)")
    ax.set_ylabel("admitted / limit")
    fig.legend(fontsize=7, loc="outside right upper")
    ax.grid(axis="y", alpha=0.3)
    return Figure("Admitted in a flood around a window boundary", figure_data_uri(fig),
                  "The fixed window (and naive, its decision) lets one window's quota through on each side.")


def memory_figure(v: View) -> Figure:
    fig = MplFigure(figsize=(8, 3.6), layout="constrained")
    ax = fig.add_subplot()
    summaries = [memory(v, d) for d in v.designs]
    ax.bar(v.designs, [s.mean if s.known else 0.0 for s in summaries],
           yerr=[0.0 if math.isnan(s.ci95) else s.ci95 for s in summaries], capsize=3, color="steelblue")
    ax.set_xlabel("design")
    ax.set_ylabel(f"Redis bytes per tenant (load {fmt_load(v.top_load)})")
    ax.grid(axis="y", alpha=0.3)
    ax.tick_params(axis="x", labelsize=8)
    return Figure("Memory per tenant", figure_data_uri(fig),
                  "Estimated Redis memory of one tenant's limiter key, mean over the decisions of a run.")


def race_skew_figure(v: View) -> Figure:
    fig = MplFigure(figsize=(9, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    for i, d in enumerate(v.designs):
        s = [v.get(d, lp, "race_admitted_ratio") for lp in v.load_points]
        # Atomic designs coincide at the limit: shrinking markers keep each one visible.
        ax.plot(v.load_points, [x.mean if x.known else np.nan for x in s], marker="o", markersize=9 - i,
                linestyle="--" if d == UNSAFE else "-", label=d)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(v.load_points, [fmt_load(lp) for lp in v.load_points])
    ax.minorticks_off()
    ax.set_xlabel("requests sent (x limit)")
    ax.set_ylabel("admitted / limit")
    ax.set_title("the race", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    lp = v.top_load
    grouped_bars(ax, [d.replace("_", "\n") for d in v.designs],
          {"clocks agree": [v.get(d, lp, "cluster_max_window_ratio") for d in v.designs],
           "clocks skewed": [v.get(d, lp, "skew_max_window_ratio") for d in v.designs]})
    ax.plot(np.arange(len(v.designs)), [PROMISED_WINDOW_RATIO.get(d, DEFAULT_PROMISE) for d in v.designs], "k_",
            markersize=18, label="promise")
    ax.set_xlabel("design")
    ax.set_ylabel("most admitted in one window / limit")
    ax.set_title(f"clock skew, load {fmt_load(lp)}", fontsize=10)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return Figure("Concurrency and clock skew", figure_data_uri(fig),
                  "Left: only the read-then-write design admits more than the limit when requests overlap. "
                  "Right: mean over seeds with 95% CI; the black bar is what each algorithm promises.")


def live_figure(comps: list[Comparison]) -> Figure:
    fig = MplFigure(figsize=(8, 3.8), layout="constrained")
    ax = fig.add_subplot()
    noisy = [c for c in comps if c.group == "noisy" and c.live_rate.known]
    for i, d in enumerate(order({c.design for c in noisy})):
        mine = sorted((c for c in noisy if c.design == d), key=lambda c: c.load_point)
        color = f"C{i}"
        ax.plot([c.load_point for c in mine], [c.live_rate.mean for c in mine], "D-", color=color,
                label=f"{d} measured")
        sim = [(c.load_point, c.sim_rate.mean) for c in mine if c.sim_rate.known]
        if sim:
            # Hollow and larger, so a simulated rate equal to the measured one rings its diamond instead of hiding.
            ax.plot(*zip(*sim, strict=True), "o:", color=color, markerfacecolor="none", markersize=11,
                    markeredgewidth=1.5, label=f"{d} simulated")
    loads = sorted({c.load_point for c in noisy})
    ax.set_xscale("log")
    if len(loads) == 1:  # one measured load: its points centred, a factor of two of room either side
        ax.set_xlim(loads[0] / 2, loads[0] * 2)
    ax.set_xticks(loads, [fmt_load(lp) for lp in loads])
    ax.minorticks_off()
    # A rate in percent: the whole range, so that a small gap looks small.
    ax.set_ylim(-2, 102)
    ax.set_xlabel("noisy tenant's offered rate (x quota)")
    ax.set_ylabel("noisy tenant's 429 rate (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return Figure("The noisy tenant's 429 rate, simulated and measured", figure_data_uri(fig),
                  "Diamonds: the live run; rings: the simulation's noisy-neighbour experiment at the same load.")
