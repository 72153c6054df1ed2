"""The evidence every pattern report shares: invariant checks, the sentences about missing runs and
thin data, the live run's setup line and trouble, and the load generator's send lag.

The send lag is how late the open-model generator (loadtests/common/openmodel.py) launched a
request against its schedule. Latency counts from the intended send time, so a lag is inside every
measured latency but is not the service's: a latency whose cell's lag p99 exceeds a tenth of it is
flagged. With several Locust processes (`saaslab load --processes N`) each one's share and lag are
rows of their own (tenant `worker-<i>`), summed up in `generator_line`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from saaslab.report.content import Table
from saaslab.report.data import RunData
from saaslab.report.numbers import Summary, fmt_list, fmt_load, fmt_loads, fmt_num, load_key
from saaslab.results import ALL_TENANTS, WORKER_PREFIX, Row

MIN_SEEDS = 5
"""Seeds per cell below which a simulation's intervals are too wide to conclude from."""
SEND_LAG_METRIC = "send_lag_p99"
LAG_SHARE = 0.1
"""A measured latency whose generator lag p99 exceeds this share of it is flagged."""
NOT_RECORDED = "not recorded"


# --- invariants -----------------------------------------------------------------------------------

def checks_table(run: RunData | None, pattern: str) -> tuple[Table | None, str]:
    """The live run's invariant results as a table, or None and a sentence saying why there are none."""
    if run is None:
        return None, (f"No live run, so no invariant results: `saaslab load {pattern}` runs the checks "
                      "and writes live/check.json.")
    if run.checks is None:
        return None, (f"The live run in {run.directory} has no check.json: re-run `saaslab load {pattern}`, "
                      "which writes it.")
    if not run.checks:
        return None, "The live run's check.json lists no checks."
    rows = [[c.name, "yes" if c.valid else "NO", str(c.checked), str(c.violations), c.detail]
            for c in run.checks]
    return Table("Invariant checks on the live history",
                 ["check", "valid", "checked", "violations", "detail"], rows), ""


def live_checks_note(run: RunData | None, pattern: str) -> str:
    """Why a table of simulated and live checks has no live rows ('' when it has them)."""
    if run is None:
        return (f"No live run, so no live invariant results: `saaslab load {pattern}` runs the checks on the live "
                "history and writes live/check.json.")
    if run.checks is None:
        return f"The live run in {run.directory} has no check.json: re-run `saaslab load {pattern}`, which writes it."
    return ""


def simulated_check_rows(designs: Sequence[str], checks: Sequence[str],
                         held: Callable[[str, str], tuple[int, int]]) -> list[list[str]]:
    """One row per design and check the simulation judged: in how many runs it held (`held` gives (held, runs))."""
    rows = []
    for d in designs:
        for check in checks:
            ok, n = held(d, check)
            if n:
                rows.append(["simulated", d, check, f"{ok}/{n} runs", str(n - ok)])
    return rows


def sim_and_live_checks(title: str, columns: Sequence[str], caption: str, simulated: list[list[str]],
                        live: RunData | None, note: str) -> tuple[Table | None, str]:
    """The simulated check rows and the live run's verdicts in one table, with `note` (why no live rows)."""
    rows = simulated + [["live", "", c.name, "yes" if c.valid else "NO", f"{c.violations:,}"]
                        for c in (live.checks or [] if live is not None else [])]
    if not rows:
        return None, note or "No invariant results were recorded."
    return Table(title, list(columns), rows, caption=caption), note


def on_design(check_name: str, design: str | None) -> bool:
    """Whether a live check judged `design`: a run of several designs names each check `<check>[<design>]`."""
    return design is not None and check_name.endswith(f"[{design}]")


def checks_sentence(run: RunData | None, unsafe: str | None = None) -> str | None:
    """One conclusion about the invariants, or None when no checks ran. Checks on the deliberately `unsafe` design
    are meant to fail: their failing is said to be expected, and their all holding is said to be a problem."""
    if run is None or not run.checks:
        return None
    failed = [c for c in run.checks if not c.valid]
    checked = sum(c.checked for c in run.checks)
    on_unsafe = [c for c in run.checks if on_design(c.name, unsafe)]
    caught = [c for c in failed if c in on_unsafe]
    problems = [c for c in failed if c not in on_unsafe]
    if not failed and len(run.checks) == 1:
        return f"The invariant check {run.checks[0].name} held on the live history ({checked:,} items checked)."
    if not failed and not on_unsafe:
        return f"All {len(run.checks)} invariant checks held on the live history ({checked:,} items checked)."
    parts = []
    if caught:
        names = fmt_list([f"{c.name} ({c.violations:,} violations)" for c in caught])
        parts.append(f"On the live history the checker caught the deliberately unsafe {unsafe} design, as expected: "
                     f"{names} failed.")
    elif on_unsafe:
        parts.append(f"Every check on the deliberately unsafe {unsafe} design held on the live history, a problem: "
                     "the run did not show the checker catching it.")
    if problems:
        names = fmt_list([f"{c.name} ({c.violations:,} violations)" for c in problems])
        safe = " on designs meant to be safe" if on_unsafe else ""
        parts.append(f"{len(problems)} of {len(run.checks)} invariant checks failed on the live history{safe}, a "
                     f"problem: {names}.")
    else:
        held = len(run.checks) - len(failed)
        parts.append(f"The other {held} invariant checks held ({checked:,} items checked in all)."
                     if caught else f"The other checks held ({checked:,} items checked in all).")
    return " ".join(parts)


# --- missing and thin data ------------------------------------------------------------------------

def seeds_note(pattern: str, seeds: int) -> str | None:
    """A note when the simulation ran too few seeds for its intervals to mean much."""
    if seeds >= MIN_SEEDS:
        return None
    return (f"The simulation used {seeds} seed(s); conclusions need at least {MIN_SEEDS} "
            f"(`saaslab sim {pattern} --seeds {MIN_SEEDS}`), so the intervals here are wide or missing.")


def no_simulation(pattern: str, what_is_missing: str) -> str:
    return f"There is no simulation, so {what_is_missing}: run `saaslab sim {pattern}`."


def no_live_run(pattern: str) -> str:
    return (f"No live run yet: run `saaslab load {pattern}`, then `saaslab report {pattern}`; the measured columns "
            "fill in from its rows.")


def unsimulated_note(live_loads: Sequence[float], simulated: Sequence[float], what: str) -> str | None:
    """A note naming the live load points the simulation never ran."""
    if not simulated:
        return None
    missing = [lp for lp in live_loads if lp not in simulated]
    if not missing:
        return None
    return (f"The simulation has no {fmt_loads(missing)} (it ran {fmt_loads(simulated)}), so those rows have no "
            f"simulated {what}.")


def live_run_line(params: dict[str, object], keys: Sequence[str], extra: Sequence[str] = ()) -> str:
    """'Live run: load points [0.5]; duration s 60; ...' from the live run.json's parameters."""
    parts = [f"{k.replace('_', ' ')} {params[k]}" for k in keys if params.get(k) is not None] + list(extra)
    return "Live run: " + ("; ".join(parts) if parts else "no parameters recorded") + "."


NO_WORKLOAD = "The runs recorded no workload parameters (run.json is missing or has none)."
SETUP_ERRORS = (KeyError, TypeError, ValueError)
"""What reading a run.json written by an older version (a key missing or of another type) raises."""


def simulated_setup(pattern: str, params: dict[str, Any], lines: Callable[[dict[str, Any]], list[str]],
                    what: str = "setup") -> list[str]:
    """`lines(params)` from the simulated run.json, or one line saying its `what` is incomplete."""
    try:
        return lines(params)
    except SETUP_ERRORS:
        return [f"The simulated run's {what} in run.json is incomplete (an older version?): re-run "
                f"`saaslab sim {pattern}`."]


def workload_lines(pattern: str, sim: RunData | None, live: RunData | None,
                   setup: Callable[[dict[str, Any]], list[str]], live_line: Callable[[dict[str, Any]], str]) -> list[str]:
    """The workload section: the simulated setup (when its run.json has one), then the live run's line."""
    lines = []
    if sim is not None and sim.parameters.get("setup"):
        lines += simulated_setup(pattern, sim.parameters, setup)
    if live is not None:
        lines.append(live_line(live.parameters))
    return lines or [NO_WORKLOAD]


LIVE_TROUBLE = (("errors", "errors"), ("timeouts", "timeouts"), ("dropped", "dropped arrivals"))


def live_trouble_notes(get: Callable[[str, float, str], Summary], designs: Sequence[str], loads: Sequence[float],
                       metrics: Sequence[tuple[str, str]] = LIVE_TROUBLE) -> list[str]:
    """'Live gcra at load 2 saw 3 errors and 1 timeouts.' for each live cell with trouble."""
    notes = []
    for d in designs:
        for lp in loads:
            problems = [f"{s.mean:,.0f} {noun}" for metric, noun in metrics
                        if (s := get(d, lp, metric)).known and s.mean > 0]
            if problems:
                notes.append(f"Live {d} at load {fmt_load(lp)} saw {fmt_list(problems)}.")
    return notes


# --- the load generator's send lag ------------------------------------------------------------------

@dataclass(frozen=True)
class LiveLatency:
    """A measured latency the report shows, in the live cell whose generator lag sits under it."""

    design: str
    load_point: float
    label: str
    ms: float


def send_lags(run: RunData) -> dict[tuple[str, float], float]:
    """The generator's send lag p99 (ms) per (design, load point), the mean over the run's seeds."""
    found: dict[tuple[str, float], list[float]] = {}
    for r in run.select(metric=SEND_LAG_METRIC, tenant=ALL_TENANTS):
        found.setdefault((r.design, load_key(r.load_point)), []).append(r.value)
    return {k: sum(v) / len(v) for k, v in found.items()}


def _flagged(lag: float | None, latency: LiveLatency) -> bool:
    return lag is not None and lag > LAG_SHARE * latency.ms


def send_lag_table(run: RunData, latencies: Sequence[LiveLatency]) -> Table:
    lags = send_lags(run)
    rows = []
    for x in latencies:
        lag = lags.get((x.design, load_key(x.load_point)))
        share = f"{fmt_num(100 * lag / x.ms)}%" if lag is not None and x.ms > 0 else "n/a"
        rows.append([x.design, fmt_load(x.load_point), x.label, f"{fmt_num(x.ms)} ms",
                     f"{fmt_num(lag)} ms" if lag is not None else NOT_RECORDED,
                     share, "FLAGGED" if _flagged(lag, x) else ""])
    return Table("The load generator's send lag beside the measured latencies",
                 ["design", "load", "measured", "value", "send lag p99", "lag / value", "lag > a tenth"], rows,
                 caption=("Send lag: how late the load generator launched a request against its schedule, p99 over "
                          "the cell. Latency counts from the intended send time, so the lag is inside the measured "
                          "value but is not the service's; FLAGGED where it exceeds a tenth of the value."))


def send_lag_sentence(run: RunData, latencies: Sequence[LiveLatency], live_module: str | None) -> str | None:
    """One conclusion: the lag's range, and which measured latencies it weighs on (or that it was not recorded)."""
    if not latencies:
        return None
    lags = send_lags(run)
    cells = {(x.design, load_key(x.load_point)) for x in latencies}
    known = [lags[c] for c in cells if c in lags]
    if not known:
        where = f" ({live_module} does not emit {SEND_LAG_METRIC})" if live_module else ""
        return (f"The load generator's send lag was not recorded{where}, so the measured latencies cannot be told "
                "apart from the generator's own delay.")
    low, high = min(known), max(known)
    span = f"{fmt_num(low)} ms" if fmt_num(low) == fmt_num(high) else f"{fmt_num(low)} to {fmt_num(high)} ms"
    missing = "" if len(known) == len(cells) else f" (not recorded for {len(cells) - len(known)} cells)"
    flagged = [x for x in latencies if _flagged(lags.get((x.design, load_key(x.load_point))), x)]
    if not flagged:
        return (f"The load generator's send lag p99 was {span}{missing}, under a tenth of every measured latency "
                "shown, so those latencies are the service's.")
    worst = sorted(flagged, key=lambda x: -lags[(x.design, load_key(x.load_point))] / x.ms)[:3]
    named = [f"{x.design} at load {fmt_load(x.load_point)} ({x.label} {fmt_num(x.ms)} ms, lag "
             f"{fmt_num(lags[(x.design, load_key(x.load_point))])} ms)" for x in worst]
    more = len(flagged) - len(worst)
    listed = f"{', '.join(named)} and {more} more" if more else fmt_list(named)
    return (f"The load generator's send lag p99 was {span}{missing} and exceeds a tenth of {len(flagged)} of "
            f"{len(latencies)} measured latencies: {listed}; those figures carry the generator's delay, not "
            "only the service's.")


def lag_flagged(run: RunData, latencies: Sequence[LiveLatency]) -> bool:
    lags = send_lags(run)
    return any(_flagged(lags.get((x.design, load_key(x.load_point))), x) for x in latencies)


def _ratios(rows: Sequence[Row], tenant: str) -> list[float]:
    """sent_rate / target_rate of each cell (design, load point, seed) of `tenant`'s rows."""
    by_cell: dict[tuple[str, float, int], dict[str, float]] = {}
    for r in rows:
        if r.tenant == tenant and r.metric in ("sent_rate", "target_rate"):
            by_cell.setdefault((r.design, load_key(r.load_point), r.seed), {})[r.metric] = r.value
    return [c["sent_rate"] / c["target_rate"] for c in by_cell.values()
            if c.get("target_rate") and "sent_rate" in c]


def _pct_span(ratios: Sequence[float]) -> str:
    low, high = (f"{100 * x:.1f}%" for x in (min(ratios), max(ratios)))
    return low if low == high else f"{low} to {high}"


def generator_line(run: RunData) -> str | None:
    """'Load generator: 2 Locust processes ...': what each process sent against its share of the schedule and
    its worst send lag p99 over the run's cells, from the `worker-<i>` rows; None for a run without them."""
    workers = sorted({r.tenant for r in run.rows if r.tenant.startswith(WORKER_PREFIX)},
                     key=lambda t: (len(t), t))
    if not workers:
        return None
    parts = []
    for w in workers:
        lags = [r.value for r in run.rows if r.tenant == w and r.metric == SEND_LAG_METRIC]
        ratios = _ratios(run.rows, w)
        lag = f"send lag p99 at most {fmt_num(max(lags))} ms" if lags else f"send lag {NOT_RECORDED}"
        sent = f"sent {_pct_span(ratios)} of its share's rate" if ratios else ""
        parts.append(f"{w} {', '.join(x for x in (sent, lag) if x)}")
    total = _ratios(run.rows, ALL_TENANTS)
    together = f"; all together {_pct_span(total)} of the target rate" if total and len(workers) > 1 else ""
    if len(workers) == 1:
        head = "1 Locust process"
    else:
        head = (f"{len(workers)} Locust processes (Locust's distributed mode), each sending one in every "
                f"{len(workers)} arrivals of the one seeded schedule from a common start")
    runs = len({(r.design, load_key(r.load_point), r.seed) for r in run.rows if r.tenant in workers})
    return f"Load generator: {head}; over {runs} run{'s' if runs != 1 else ''}, {'; '.join(parts)}{together}."
