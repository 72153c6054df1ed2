"""The sharding report's tables, figures and invariant results (from the simulation; the live run's checks beside)."""

from __future__ import annotations

from matplotlib.figure import Figure as MplFigure

from saaslab.report import Figure, RunData, Table, figure_data_uri, fmt_load, grouped_bars
from saaslab.report.evidence import live_checks_note, sim_and_live_checks, simulated_check_rows
from saaslab.reports.sharding.conclusions import balance_cell
from saaslab.reports.sharding.view import (
    CHECKS,
    HASHED,
    PATTERN,
    PUBLISHED_RING_SPREAD,
    View,
    big,
    megabytes,
    pct,
    times,
)

CI = "Mean ± 95% CI over seeds."


def balance_table(v: View) -> Table:
    designs = v.designs_with("load_max_over_mean")
    rows = []
    for c in v.cells("load_max_over_mean"):
        floor = next((s for d in designs if (s := v.at(d, "load_floor", **c)).known), None)
        rows.append([big(c["tenants"]), f"{c['shards']:g}", f"{c['zipf']:g}",
                     *[times(v.at(d, "load_max_over_mean", **c)) for d in designs],
                     times(floor) if floor is not None else "n/a"])
    return Table("The hottest shard's load over the mean, per scheme (simulated)",
                 ["tenants", "shards", "Zipf", *designs, "floor"], rows,
                 caption=("Load: each tenant's share of requests, Zipf over ranks with the given exponent. floor: the "
                          "hottest tenant's load over the mean shard load (at least 1), which no placement can beat. "
                          "directory: the jump fallback rebalanced by load (rebalance_plan, tolerance 1.10); n/a above "
                          f"the tenants it is rebalanced for. {CI}"))


def spread_table(v: View) -> Table:
    designs = v.designs_with("tenants_cv")
    rows = [[big(c["tenants"]), f"{c['shards']:g}", *[pct(v.at(d, "tenants_cv", **c)) for d in designs]]
            for c in v.cells("tenants_cv")]
    return Table("Tenants per shard: standard deviation over the mean (simulated)", ["tenants", "shards", *designs],
                 rows, caption=f"Tenant counts alone (the hash's evenness, whatever the tenants' sizes). {CI}")


def growth_table(v: View) -> Table:
    rows = []
    for c in v.cells("moved_theory"):
        for d in v.designs_with("moved_theory"):
            theory = v.at(d, "moved_theory", **c)
            if not theory.known:
                continue
            zipfs = v.axis("moved_rows_share", "zipf")
            tenants = (v.at(d, "moved_tenants_share", **c) if d != "directory"
                       else v.at(d, "moved_tenants_share", zipf=1.0 if 1.0 in zipfs else zipfs[0], **c))
            rows.append([f"{c['shards']:g} -> {c['shards'] + 1:g}", d, pct(theory), pct(tenants),
                         *[pct(v.at(d, "moved_rows_share", zipf=z, **c)) for z in zipfs]])
    zipfs = v.axis("moved_rows_share", "zipf")
    return Table("What moves when a shard is added (simulated)",
                 ["shards", "scheme", "theory", "tenants moved", *[f"rows moved, Zipf {z:g}" for z in zipfs]], rows,
                 caption=("Theory: N/(N+1) for mod, 1/(N+1) for ring, jump and rendezvous (expected_moved_fraction). "
                          "The directory moves nothing on growth; its row is what rebalance_plan then moves to fill "
                          "the new shard (tenants moved at Zipf 1). Rows follow requests, so one hot tenant moving "
                          f"shifts the rows moved far from the tenants moved. {CI}"))


def ring_table(v: View) -> Table:
    rows = []
    for c in v.cells("ring_spread", "ring"):
        rows.append([big(c["vnodes"]), f"{c['shards']:g}", big(c["tenants"]), pct(v.at("ring", "ring_spread", **c)),
                     pct(v.at("ring", "ring_spread_raw", **c)), times(v.at("ring", "ring_min_over_mean", **c)),
                     times(v.at("ring", "ring_max_over_mean", **c)),
                     f"{100 * PUBLISHED_RING_SPREAD[int(c['vnodes'])]:g}%"
                     if int(c["vnodes"]) in PUBLISHED_RING_SPREAD else "n/a"])
    return Table("The ring's spread against the published figure (simulated)",
                 ["points per shard", "shards", "tenants", "spread", "spread as counted", "least / mean",
                  "most / mean", "published"], rows,
                 caption=("Spread: standard deviation of the shards' shares over the mean, from equal tenants; counting "
                          "tenants adds binomial noise ((shards - 1) / tenants to the squared spread), taken out in "
                          f"'spread' and kept in 'as counted'. Published: the jump consistent hash paper. {CI}"))


def memory_table(v: View) -> Table:
    rows = []
    for c in v.cells("router_bytes"):
        for d in v.designs_with("router_bytes"):
            s = v.at(d, "router_bytes", **c)
            if s.known:
                per = v.at(d, "router_bytes_per_tenant", **c)
                rows.append([d, big(c["tenants"]), f"{c['shards']:g}", megabytes(s),
                             per.text(" B") if per.known else "none (no table)"])
    return Table("Router memory (simulated, measured)", ["scheme", "tenants", "shards", "memory", "per tenant"], rows,
                 caption=("Measured with tracemalloc: the Python allocations the router keeps once built (the ring its "
                          "points; the directory an entry per tenant, tenant id strings included, scaled from the "
                          "tenants measured when fewer than 1,000,000). Seed 0 only: no interval."))


def queue_table(v: View) -> Table:
    rows = []
    for lp in v.loads_of("hot_shard_p99"):
        for c in v.cells("hot_shard_p99"):
            mean = next((s for d in v.designs if (s := v.at(d, "mean_shard_p99", lp, shards=c["shards"])).known),
                        None)
            for d in v.designs_with("hot_shard_p99"):
                p99 = v.at(d, "hot_shard_p99", lp, **c)
                if p99.known:
                    rows.append([fmt_load(lp), f"{c['zipf']:g}", d, times(v.at(d, "hot_shard_utilisation", lp, **c)),
                                 v.at(d, "hot_shard_p50", lp, **c).text(" ms"), p99.text(" ms"),
                                 mean.text(" ms") if mean is not None else "n/a"])
    cells = v.cells("hot_shard_p99")
    where = f" ({big(cells[0]['tenants'])} tenants, {cells[0]['shards']:g} shards)" if cells else ""
    return Table(f"The hottest shard's queue{where} (simulated)",
                 ["mean utilisation", "Zipf", "scheme", "hot shard utilisation", "hot p50", "hot p99",
                  "mean-load shard p99"], rows,
                 caption=("Each shard: the shard pool's connections, FIFO, a request holding one for 5 ms + exponential "
                          "5 ms. Utilisation above 1: the shard is overloaded and its latencies grow with the run "
                          f"(every request is served, the backlog drained after arrivals stop). {CI}"))


def move_table(v: View) -> Table:
    rows = []
    for d in v.designs_with("write_blocked_ms"):
        for c in v.cells("write_blocked_ms", d):
            def get(metric: str, d: str = d, c: dict = c):  # type: ignore[no-untyped-def, type-arg]
                return v.at(d, metric, **c)

            ok = v.seeds_in(d, "checks_valid", **c)
            rows.append([d, big(c["rows"]), f"{c['wps']:g}", get("move_duration_ms").text(" ms"),
                         get("catch_up_rounds").text(), get("write_blocked_ms").text(" ms"),
                         get("write_latency_p99").text(" ms"), get("lost_writes").text(), get("misplaced_rows").text(),
                         get("stale_reads").text(),
                         f"{sum(1 for x in ok.values() if x >= 0.5)}/{len(ok)}" if ok else "n/a"])
    return Table("Moving one tenant online (simulated)",
                 ["mover", "rows", "writes/s", "duration", "catch-up rounds", "writes blocked", "write p99",
                  "lost writes", "rows left behind", "stale reads", "all checks held"], rows,
                 caption=("Writes blocked: fence to flip (MoveState.write_blocked_us). Write p99: every acknowledged "
                          "write of the run, retries at the fence included. Lost: acknowledged, then on no shard. Left "
                          "behind: rows on a shard the directory does not name. Stale reads: reads that missed an "
                          f"acknowledged write. Checks held: runs (seeds) where every invariant held. {CI}"))


def _panel(ax, title: str, xlabel: str, ylabel: str) -> None:  # type: ignore[no-untyped-def]
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)


def headline_figure(v: View) -> Figure | None:
    """Balance by skew, data moved on growth, and the move's blocked window and lost writes."""
    cell = balance_cell(v)
    if cell is None:
        return None
    fig = MplFigure(figsize=(13, 3.9), layout="constrained")
    ax = fig.add_subplot(1, 3, 1)
    zipfs = v.axis("load_max_over_mean", "zipf")
    designs = v.designs_with("load_max_over_mean")
    series = {}
    for d in designs:
        series[d] = [v.at(d, "load_max_over_mean", **({**cell, "zipf": z} if d != "directory" else
                                                        v.nearest(d, "load_max_over_mean", {**cell, "zipf": z})
                                                        or {**cell, "zipf": z})) for z in zipfs]
    grouped_bars(ax, [f"Zipf {z:g}" for z in zipfs], series)
    floors = [next((s.mean for d in HASHED if (s := v.at(d, "load_floor", **{**cell, "zipf": z})).known), 1.0)
              for z in zipfs]
    ax.plot(range(len(zipfs)), floors, "k_", markersize=30, label="floor")
    _panel(ax, f"hottest shard, {big(cell['tenants'])} tenants / {cell['shards']:g} shards", "request skew",
           "max / mean shard load")
    ax = fig.add_subplot(1, 3, 2)
    shards = v.axis("moved_theory", "shards")
    tenants = v.axis("moved_theory", "tenants")
    if shards and tenants:
        zipfs = v.axis("moved_rows_share", "zipf")
        z = 1.0 if 1.0 in zipfs else zipfs[0]
        growth = {d: [v.at(d, "moved_rows_share", zipf=z, tenants=tenants[-1], shards=k) for k in shards]
                  for d in v.designs_with("moved_rows_share")}
        grouped_bars(ax, [f"{k:g} -> {k + 1:g}" for k in shards], growth)
        ax.plot(range(len(shards)), [1 / (k + 1) for k in shards], "k_", markersize=30, label="1/(N+1)")
        _panel(ax, f"rows moved when a shard is added (Zipf {z:g})", "shards", "share of rows moved")
    ax = fig.add_subplot(1, 3, 3)
    cells = v.cells("write_blocked_ms", "fenced")
    rows = max((c["rows"] for c in cells), default=None)
    if rows is not None:
        rates = sorted({c["wps"] for c in cells if c["rows"] == rows})
        movers = v.designs_with("write_blocked_ms")
        bars = {f"{d}: writes blocked (ms)": [v.at(d, "write_blocked_ms", rows=rows, wps=w) for w in rates]
                for d in movers if d == "fenced"}
        bars |= {f"{d}: acknowledged writes lost": [v.at(d, "lost_writes", rows=rows, wps=w) for w in rates]
                 for d in movers}
        grouped_bars(ax, [f"{w:g}" for w in rates], bars)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(bottom=0)
        _panel(ax, f"moving a tenant of {big(rows)} rows", "writes per second to the tenant", "ms, or writes")
    return Figure("Load balance, data moved on growth, and online moves", figure_data_uri(fig),
                  "Mean over seeds with 95% CI error bars. Left: the directory at the most tenants it is rebalanced "
                  "for; the floor is the hottest tenant alone. Middle: the directory's bar is what its rebalancer "
                  "moves. Right: linear up to 1, logarithmic above; a missing bar is zero.")


def queue_figure(v: View) -> Figure | None:
    loads = v.loads_of("hot_shard_p99")
    cells = v.cells("hot_shard_p99")
    if not loads or not cells:
        return None
    lp = loads[-1]
    fig = MplFigure(figsize=(7, 3.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    designs = v.designs_with("hot_shard_p99")
    grouped_bars(ax, [f"Zipf {c['zipf']:g}" for c in cells],
                 {d: [v.at(d, "hot_shard_p99", lp, **c) for c in cells] for d in designs})
    mean = next((s.mean for d in designs if (s := v.at(d, "mean_shard_p99", lp, shards=cells[0]["shards"])).known),
                None)
    if mean is not None:
        ax.axhline(mean, color="k", linestyle="--", linewidth=1, label="shard at the mean load")
    ax.set_yscale("log")
    _panel(ax, f"hottest shard p99 at {fmt_load(lp)} mean utilisation", "request skew", "p99 (ms, log)")
    return Figure("The hottest shard's p99 by scheme and skew", figure_data_uri(fig), "Mean over seeds with 95% CI "
                  "error bars.")


def invariants(sim: View | None, live: RunData | None) -> tuple[Table | None, str]:
    simulated = simulated_check_rows(sim.designs_with("checks_valid"), CHECKS, sim.held) if sim is not None else []
    return sim_and_live_checks(
        "Invariant checks (reference_impl/sharding/invariants.py)", ["source", "mover", "check", "held", "failed"],
        ("Simulated: in how many moves (tenant sizes x write rates x seeds) the check held on the move's history and "
         "final shards. Live: the verdict on the live history and every shard read back."),
        simulated, live, live_checks_note(live, PATTERN))
