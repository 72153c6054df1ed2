"""The failover report's tables, figures and invariant results (from the simulation; the live run's checks beside)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure as MplFigure

from saaslab.report import Figure, RunData, Summary, Table, figure_data_uri, fmt_g, fmt_num, grouped_bars
from saaslab.report.evidence import sim_and_live_checks, simulated_check_rows
from saaslab.reports.failover.view import CHECKS, PATTERN, View
from scenarios.failover.plan import Condition, timers_named

CI = "Mean ± 95% CI over seeds."
MAP_COLOURS = LinearSegmentedColormap.from_list("false_failover", ["#e8f5e9", "#fdd835", "#c62828"])


def pct(s: Summary) -> str:
    if not s.known:
        return "n/a"
    text = f"{100 * s.mean:.0f}%"
    return text if math.isnan(s.ci95) else f"{text} ± {100 * s.ci95:.0f}"


def timers_text(name: str) -> str:
    t = timers_named(name)
    return f"ttl {fmt_g(t.ttl_us / 1e6)} s, loop {fmt_g(t.loop_wait_us / 1e6)} s, retry {fmt_g(t.retry_timeout_us / 1e6)} s"


# --- the false-failover map ---------------------------------------------------------------------------

def map_tables(v: View) -> list[Table]:
    out = []
    for fault, what in (("pause", "a pause of the primary's server"), ("spike", "a latency spike on its links")):
        lengths = v.map_lengths(fault)
        if not lengths:
            continue
        rows = [[f"{fmt_g(ttl)} s"] + [pct(v.map_cell(fault, ttl, length)) for length in lengths] for ttl in v.map_ttls]
        out.append(Table(f"False failovers after {what} (simulated)",
                         ["ttl \\ lasting", *(f"{fmt_g(x)} s" for x in lengths)], rows,
                         caption=("Share of trials in which the replica was promoted although the primary never died; "
                                  "timers ttl with loop_wait = retry_timeout = ttl/3 (Patroni's proportions). " + CI)))
    return out


def map_figure(v: View) -> Figure | None:
    faults = [f for f in ("pause", "spike") if v.map_lengths(f)]
    if not faults or not v.map_ttls:
        return None
    fig = MplFigure(figsize=(5.2 * len(faults), 3.4), layout="constrained")
    image = None
    for i, fault in enumerate(faults):
        ax = fig.add_subplot(1, len(faults), i + 1)
        lengths = v.map_lengths(fault)
        grid = np.full((len(v.map_ttls), len(lengths)), np.nan)
        for r, ttl in enumerate(v.map_ttls):
            for c, length in enumerate(lengths):
                s = v.map_cell(fault, ttl, length)
                if s.known:
                    grid[r, c] = s.mean
                    ax.text(c, r, f"{100 * s.mean:.0f}", ha="center", va="center", fontsize=8)
        image = ax.imshow(grid, cmap=MAP_COLOURS, vmin=0, vmax=1, origin="lower", aspect="auto")
        ax.set_xticks(range(len(lengths)), [fmt_g(x) for x in lengths])
        ax.set_yticks(range(len(v.map_ttls)), [fmt_g(x) for x in v.map_ttls])
        ax.set_xlabel(f"{fault} length (s)")
        ax.set_ylabel("detection timeout: lease ttl (s)")
        ax.set_title("GC-like pause of the primary" if fault == "pause" else "latency spike on the primary's links",
                     fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=fig.axes, label="share of trials with a failover", shrink=0.9)
    return Figure("False-failover map: detection timeout against pauses and latency spikes", figure_data_uri(fig),
                  "Each cell: the percentage of trials (seeds x trials at random loop phases) after which the replica "
                  "was promoted although the primary was alive all along; loop_wait = retry_timeout = ttl/3.")


# --- unavailability per incident and per year -----------------------------------------------------------

def timers_table(v: View, incidents: float) -> Table | None:
    rows = []
    for preset in v.presets:
        for d in v.designs:
            unavailable = v.timer_cell(d, preset, "unavailability")
            if not unavailable.known:
                continue
            rows.append([preset, timers_text(preset), d, v.timer_cell(d, preset, "failover_s").text(" s"),
                         unavailable.text(" s"), v.timer_cell(d, preset, "downtime_per_year").text(" min")])
    if not rows:
        return None
    return Table("A dead primary: unavailability per incident and per year (simulated)",
                 ["timers", "settings", "design", "fault to promotion", "unavailable per incident", "per year"], rows,
                 caption=("Unavailable: the checker's window, from the first failed write after the kill to the first "
                          f"acknowledged one. Per year: at an assumed {fmt_g(incidents)} primary losses a year. {CI}"))


# --- lost and split-brain writes ------------------------------------------------------------------------

def loss_table(v: View) -> Table | None:
    rate = v.drill_rate
    rows = []
    for c in v.loss_conditions:
        for d in v.designs:
            get = lambda m, d=d, c=c: v.at(d, rate, m, c)  # noqa: E731
            if not get("writes_acknowledged").known:
                continue
            rows.append([c.fault + ("" if c.fault == "kill" else f" {fmt_g(c.hold_s)} s"), f"{fmt_g(c.lag_ms)} ms", d,
                         get("writes_acknowledged").text(), get("writes_lost").text(), pct(get("lost_fraction")),
                         get("split_brain_writes").text(), get("writes_unacknowledged_present").text(),
                         get("unavailability").text(" s"), get("write_latency_p99").text(" ms")])
    if not rows:
        return None
    return Table(f"Lost and split-brain writes at {fmt_g(rate)} writes/s, the lab's timers (simulated)",
                 ["fault", "replication lag", "design", "acknowledged", "lost", "lost share", "split brain",
                  "unacknowledged but present", "unavailable", "write p99"], rows,
                 caption=("Jepsen's count by reference_impl/failover/invariants.py on each run's history and the "
                          "survivors read back from the final primary. Lost: acknowledged and absent. Split brain: "
                          "acknowledged while two primaries took writes. A pause or partition lasts ttl + 2 loop_wait, "
                          f"as the drills hold it. {CI}"))


def rate_table(v: View, design: str = "async", fault: str = "kill") -> Table | None:
    lags = [lag for lag in v.lags if v.loss_condition(fault, lag) is not None]
    if design not in v.designs or not lags or not v.loss_rates:
        return None
    rows = [[f"{fmt_g(rate)}/s"] + [v.at(design, rate, "writes_lost", v.loss_condition(fault, lag)).text()  # type: ignore[arg-type]
                                     for lag in lags] + [fmt_num(rate * max(lags) / 1000)]
            for rate in v.loss_rates]
    return Table(f"Acknowledged writes lost by {design} replication when the primary dies, by write rate and lag "
                 "(simulated)", ["write rate", *(f"lag {fmt_g(x)} ms" for x in lags), f"rate x {fmt_g(max(lags))} ms"],
                 rows, caption=f"What the replica had not received when the primary died. {CI}")


def loss_figure(v: View) -> Figure | None:
    faults = [f for f in ("kill", "partition") if any(v.loss_condition(f, lag) for lag in v.lags)]
    if not faults:
        return None
    fig = MplFigure(figsize=(5.2 * len(faults), 3.6), layout="constrained")
    for i, fault in enumerate(faults):
        ax = fig.add_subplot(1, len(faults), i + 1)
        lags = [lag for lag in v.lags if v.loss_condition(fault, lag) is not None]
        for d in v.designs:
            for rate in v.loss_rates:
                cells = [v.at(d, rate, "writes_lost", v.loss_condition(fault, lag)) for lag in lags]  # type: ignore[arg-type]
                if not any(c.known for c in cells):
                    continue
                ax.errorbar([max(lag, 0.5) for lag in lags], [c.mean + 1 for c in cells],
                            yerr=[0 if math.isnan(c.ci95) else c.ci95 for c in cells], marker="o", capsize=3,
                            label=f"{d}, {fmt_g(rate)} writes/s")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("replication lag (ms)")
        ax.set_ylabel("acknowledged writes lost + 1")
        ax.set_title(f"primary {'killed' if fault == 'kill' else 'cut off'} (lab timers)", fontsize=10)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    return Figure("Lost acknowledged writes against replication lag and write rate", figure_data_uri(fig),
                  "Mean over seeds with 95% CI error bars, plus one so that zero shows on the log axis: sync sits on "
                  "the floor (no loss).")


# --- the headline ------------------------------------------------------------------------------------

def headline_figure(v: View) -> Figure:
    """Unavailability per preset, lost writes against lag, split-brain writes by fault."""
    fig = MplFigure(figsize=(13, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 3, 1)
    presets = v.presets
    grouped_bars(ax, presets, {d: [v.timer_cell(d, p, "unavailability") for p in presets] for d in v.designs
                               if any(v.timer_cell(d, p, "unavailability").known for p in presets)})
    ax.set_title("a dead primary: time unable to write", fontsize=10)
    ax.set_xlabel("failover timers")
    ax.set_ylabel("s per incident")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    rate = v.drill_rate
    ax = fig.add_subplot(1, 3, 2)
    lags = [lag for lag in v.lags if v.loss_condition("kill", lag) is not None]
    grouped_bars(ax, [f"{fmt_g(x)} ms" for x in lags],
                 {d: [v.at(d, rate, "writes_lost", v.loss_condition("kill", lag)) for lag in lags]  # type: ignore[arg-type]
                  for d in v.designs})
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(bottom=0)
    ax.set_title(f"acknowledged writes lost, primary killed ({fmt_g(rate)} writes/s)", fontsize=10)
    ax.set_xlabel("replication lag")
    ax.set_ylabel("writes per incident")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 3, 3)
    lag = v.drill_lag
    faults = [f for f in ("kill", "pause", "partition") if v.loss_condition(f, lag) is not None]
    grouped_bars(ax, faults, {d: [v.at(d, rate, "split_brain_writes", v.loss_condition(f, lag)) for f in faults]  # type: ignore[arg-type]
                              for d in v.designs})
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(bottom=0)
    ax.set_title(f"split-brain writes (lag {fmt_g(lag)} ms)", fontsize=10)
    ax.set_xlabel("fault on the primary")
    ax.set_ylabel("writes per incident")
    ax.grid(axis="y", alpha=0.3)
    return Figure("How long nobody can write, what is lost, and who writes to two primaries", figure_data_uri(fig),
                  "Mean over seeds with 95% CI error bars; a hollow marker on the axis is exactly zero. Left: the "
                  "timer presets of reference_impl/failover/core.py with the primary killed. Middle and right: the lab's "
                  "timers, as the drills run them.")


# --- invariants --------------------------------------------------------------------------------------

def invariants(sim: View | None, live: RunData | None) -> tuple[Table | None, str]:
    simulated: list[list[str]] = []
    if sim is not None:
        conditions: list[Condition] = sim.loss_conditions
        simulated = simulated_check_rows(sim.designs, CHECKS, lambda d, check: sim.held(d, check, conditions))
    if live is None:
        note = (f"No live run, so no live invariant results: `saaslab {PATTERN} drill --all` runs the checker on the "
                "drills' histories (docs/contract.md, Failover).")
    elif live.checks is None:
        note = f"The live run in {live.directory} has no check.json, so no live invariant results."
    else:
        note = ""
    return sim_and_live_checks(
        "Invariant checks (reference_impl/failover/invariants.py)", ["source", "design", "check", "held", "failed"],
        ("Simulated: in how many runs of the lost-writes experiment (rates x lags x faults x seeds) the check held on "
         "the run's history and the survivors read back. Live: the verdict on the drills' histories."),
        simulated, live, note)
