"""The sagas report's tables, figures and invariant results (from the simulation; the live run's checks beside)."""

from __future__ import annotations

from matplotlib.figure import Figure as MplFigure

from saaslab.report import Figure, RunData, Table, figure_data_uri, fmt_load, grouped_bars
from saaslab.report.evidence import live_checks_note, sim_and_live_checks, simulated_check_rows
from saaslab.reports.sagas.view import CHECKS, PATTERN, View, seconds

CI = "Mean ± 95% CI over seeds."


def outcomes_table(v: View) -> Table:
    lp = v.reference_load
    rows = []
    for c in v.conditions:
        for d in v.designs:
            def get(metric: str, d: str = d, c=c):  # type: ignore[no-untyped-def]
                return v.at(d, lp, metric, c)

            checks = v.seeds(d, lp, c.metric("checks_valid"))
            rows.append([c.label, d, get("completed_share").text(), get("compensated_share").text(),
                         get("anomalies_per_10k").text(), get("latency_p50").text(" ms"), get("latency_p99").text(" ms"),
                         get("throughput").text(), get("messages_per_saga").text(),
                         f"{sum(1 for x in checks.values() if x >= 0.5)}/{len(checks)}" if checks else "n/a"])
    return Table(f"Outcomes under faults at load {fmt_load(lp)} (simulated)",
                 ["faults", "design", "completed", "compensated", "anomalies per 10k", "p50", "p99", "orders/s",
                  "messages per saga", "all checks held"], rows,
                 caption=("Completed and compensated: share of orders. Anomalies: orders the checker flags (never "
                          "finished, or finished with an effect left or missing) per 10,000. p50 and p99: from the "
                          "POST to the order's terminal state. orders/s: completed while orders arrived. Messages: "
                          "round trips to a database, the provider or Redis, per order. Checks held: runs (seeds) "
                          f"where every invariant held. {CI}"))


def cost_table(v: View) -> Table:
    c = v.calm
    rows = [[d, fmt_load(lp), v.at(d, lp, "latency_p50", c).text(" ms"), v.at(d, lp, "latency_p99", c).text(" ms"),
             v.at(d, lp, "throughput", c).text(), v.at(d, lp, "lock_hold_p99", c).text(" ms"),
             v.at(d, lp, "messages_per_saga", c).text()]
            for d in v.designs for lp in v.load_points if v.at(d, lp, "latency_p50", c).known]
    return Table(f"What each design costs, by load ({c.label}, simulated)",
                 ["design", "load", "p50", "p99", "orders/s", "stock lock held p99", "messages per saga"], rows,
                 caption=("Load: offered orders over the payments database's capacity. Stock lock held: from the "
                          f"SELECT ... FOR UPDATE to the end of its transaction (twopc: to COMMIT PREPARED). {CI}"))


def recovery_table(v: View) -> Table:
    lp = v.reference_load
    rows = []
    for c in [x for x in v.conditions if x.failure > 0 or x.crash > 0]:
        for d in v.designs:
            rows.append([c.label, d, v.at(d, lp, "lock_hold_p99", c).text(" ms"),
                         v.at(d, lp, "in_doubt_p99", c).text(" ms"), v.at(d, lp, "in_doubt_max", c).text(" ms"),
                         seconds(v.at(d, lp, "time_to_consistency", c)),
                         v.at(d, lp, "unresolved_after_crash", c).text(), v.at(d, lp, "rejected", c).text()])
    return Table(f"Locks, doubt and recovery at load {fmt_load(lp)} (simulated)",
                 ["faults", "design", "stock lock held p99", "in doubt p99", "in doubt max", "consistent after a crash",
                  "never finished after a crash", "POSTs refused while down"], rows,
                 caption=("In doubt (twopc): from PREPARE TRANSACTION to COMMIT or ROLLBACK PREPARED. Consistent after "
                          "a crash: from the crash until every order it caught had finished, mean over crashes that "
                          "caught one (n/a: none did, or some order never finished). Never finished and refused: "
                          f"orders per run. {CI}"))


def headline_figure(v: View) -> Figure:
    """Anomalies by fault condition, the latency they cost, and time to consistency after a crash."""
    lp = v.reference_load
    fig = MplFigure(figsize=(12, 3.8), layout="constrained")
    labels = [f"{100 * c.failure:g}% fail\n{c.crash:g} crash/s" for c in v.conditions]
    panels = (("anomalies_per_10k", "anomalous orders", "per 10,000 orders", "symlog"),
              ("latency_p99", "p99 from POST to terminal state", "ms (log)", "log"))
    for i, (metric, title, label, scale) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        grouped_bars(ax, labels, {d: [v.at(d, lp, metric, c) for c in v.conditions] for d in v.designs})
        if scale == "symlog":
            ax.set_yscale("symlog", linthresh=10)
            ax.set_ylim(bottom=0)
        else:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("participant failures and crashes")
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 3, 3)
    crashing = v.crashing or v.conditions
    grouped_bars(ax, [f"{100 * c.failure:g}% fail\n{c.crash:g} crash/s" for c in crashing],
                 {d: [v.at(d, lp, "time_to_consistency", c) for c in crashing] for d in v.designs})
    ax.set_title("consistent again after a crash", fontsize=10)
    ax.set_xlabel("participant failures and crashes")
    ax.set_ylabel("ms after the crash")
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    return Figure(f"Anomalies, latency and recovery by design and faults (load {fmt_load(lp)})", figure_data_uri(fig),
                  "Mean over seeds with 95% CI error bars. Anomalies: linear up to 10, logarithmic above; a missing "
                  "bar is zero. Recovery: no bar for unsafe, which never gets there.")


def cost_figure(v: View) -> Figure:
    c = v.calm
    fig = MplFigure(figsize=(12, 3.8), layout="constrained")
    loads = [fmt_load(lp) for lp in v.load_points]
    panels = (("latency_p50", "p50 from POST to terminal state", "ms"), ("lock_hold_p99", "stock lock held, p99", "ms"),
              ("messages_per_saga", "messages per order", "round trips"))
    for i, (metric, title, label) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        grouped_bars(ax, loads, {d: [v.at(d, lp, metric, c) for lp in v.load_points] for d in v.designs})
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("offered orders (x capacity)")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    return Figure(f"What each design costs with no faults ({c.label})", figure_data_uri(fig),
                  "Mean over seeds with 95% CI error bars.")


def invariants(sim: View | None, live: RunData | None) -> tuple[Table | None, str]:
    simulated = simulated_check_rows(sim.designs, CHECKS, sim.held) if sim is not None else []
    return sim_and_live_checks(
        "Invariant checks (reference_impl/sagas/invariants.py)", ["source", "design", "check", "held", "failed"],
        ("Simulated: in how many runs (loads x fault conditions x seeds) the check held on the run's history and final "
         "state. Live: the verdict on the live history and the three databases read back."),
        simulated, live, live_checks_note(live, PATTERN))
