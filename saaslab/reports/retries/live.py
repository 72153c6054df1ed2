"""The retries report's simulated-versus-measured part: Brooker's ranking live beside the simulation's, and the
metastability cells tried live beside the simulation's map."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure as MplFigure

from saaslab.report import Figure, Summary, Table, figure_data_uri, fmt_gap, fmt_list, fmt_num, gap_percent
from saaslab.reports.retries.data import Cell, Contention, Map, calls_words, client_counts
from scenarios.retries import goodput_metric

AGREE_PCT = 15.0
"""Live calls within this many percent of the simulation's count as agreeing."""
TIMELINE_KEYS = ("trigger_at_s", "recovery_s", "hold_s")


def _ranking(c: Contention, n: int) -> list[str]:
    return [p for p, _ in c.ranking(n, "contention_calls")]


def _scale(sim_params: dict[str, Any], live: Contention, n: int) -> float:
    """The live write round trip over the simulation's (2 x its network delay): what simulated times scale by."""
    sim_write = float((sim_params.get("contention") or {}).get("network_delay_ms", {}).get("mean", 10.0)) * 2
    writes = [live.get(p, n, "contention_write_ms") for p in live.policies]
    known = [w.mean for w in writes if w.known]
    return (sum(known) / len(known)) / sim_write if known else float("nan")


def contention_table(sim: Contention, live: Contention, sim_params: dict[str, Any]) -> Table:
    rows = []
    for n in live.clients:
        scale = _scale(sim_params, live, n)
        for p in live.policies:
            s, m = sim.get(p, n, "contention_calls"), live.get(p, n, "contention_calls")
            st, mt = sim.get(p, n, "contention_completion_ms"), live.get(p, n, "contention_completion_ms")
            scaled = Summary(st.mean * scale, st.ci95 * scale, st.n) if st.known else st
            rows.append([str(n), p, s.text(), m.text(), fmt_gap(gap_percent(s.mean, m.mean)), scaled.text(), mt.text(),
                         fmt_gap(gap_percent(scaled.mean, mt.mean)), live.get(p, n, "contention_write_ms").text()])
    return Table("Contention, simulated versus measured",
                 ["clients", "policy", "calls (sim)", "calls (live)", "gap", "completion ms (sim, scaled)",
                  "completion ms (live)", "gap", "live write round trip (ms)"], rows,
                 caption="Means over seeds ± half-width of the 95% CI. Simulated completion times are scaled by the "
                         "live write round trip over the simulation's (2 x its 10 ms network delay), so both count "
                         "time in writes; calls need no scaling.")


def contention_sentences(sim: Contention | None, live: Contention, sim_params: dict[str, Any],
                         live_params: dict[str, Any]) -> list[str]:
    out = []
    for n in live.clients:
        ranked = _ranking(live, n)
        if not ranked:
            continue
        best, worst = ranked[0], ranked[-1]
        out.append(f"Live, with {n} clients, {best} made the fewest write calls "
                   f"({calls_words(live.get(best, n, 'contention_calls'))}) and {worst} the most "
                   f"({calls_words(live.get(worst, n, 'contention_calls'))}); the full order was {', '.join(ranked)}.")
        if sim is None or n not in sim.clients:
            out.append(f"The simulation has no run at {n} clients to set this beside: run `saaslab sim retries`.")
            continue
        sim_ranked = [p for p in _ranking(sim, n) if p in ranked]
        same_best = sim_ranked[:1] == ranked[:1]
        out.append(f"The simulation's order at {n} clients was {', '.join(sim_ranked)}: "
                   + ("the same" if sim_ranked == ranked else "the same policy least" if same_best
                      else "a different policy least") + ".")
        gaps = [(p, gap_percent(sim.get(p, n, "contention_calls").mean, live.get(p, n, "contention_calls").mean))
                for p in ranked]
        gaps = [(p, g) for p, g in gaps if not math.isnan(g)]
        if gaps:
            close = [p for p, g in gaps if abs(g) <= AGREE_PCT]
            far_p, far_g = max(gaps, key=lambda pg: abs(pg[1]))
            out.append(f"Live calls were within {AGREE_PCT:g}% of the simulation's for {len(close)} of {len(gaps)} "
                       f"policies; the largest gap was {far_p}'s ({fmt_gap(far_g)}).")
        scale = _scale(sim_params, live, n)
        if not math.isnan(scale):
            write = scale * 2 * 10.0
            relation = "longer" if scale > 1 else "shorter"
            out.append(f"A live write took {fmt_num(write)} ms to answer against the simulation's 20 ms, so live waits "
                       f"of the same 5 ms base and 2 s cap are {fmt_num(1 / scale)}x as long relative to a round trip: "
                       f"{relation} round trips leave {'fewer' if scale > 1 else 'more'} writes in flight per backoff "
                       "window, which is where the gaps in calls and in scaled times come from.")
    c = live_params.get("contention") or {}
    if c.get("parallel_seeds"):
        out.append(f"In this quick run each policy's {len(c.get('seeds') or [])} seeds ran at once on projects of their "
                   "own, so the service served that many times the clients and its round trips were longer than "
                   "one seed alone would see.")
    return out


# --- the map, live beside simulated ------------------------------------------------------------------

def _live_state(cell: Cell) -> str:
    return cell.majority if cell.states else "n/a"


def same_timeline(sim_params: dict[str, Any], live_params: dict[str, Any]) -> bool:
    s, m = sim_params.get("metastability") or {}, live_params.get("metastability") or {}
    return all(s.get(k) == m.get(k) for k in TIMELINE_KEYS)


def _cell_words(cell: Cell | None) -> str:
    if cell is None or not cell.states:
        return "n/a"
    amp = cell.get("meta_amplification")
    return (f"{cell.majority} ({fmt_num(cell.get('meta_goodput_after_pct').mean, 0)}% served after, "
            f"{fmt_num(amp.mean - 1)} retries per request)")


def _sim_words(cell: Cell | None) -> str:
    if cell is None or not cell.states:
        return "not simulated"
    return f"{cell.majority} {cell.count(cell.majority)}/{len(cell.states)} ({fmt_num(cell.get('meta_goodput_after_pct').mean, 0)}% served after)"


def live_cells(live: Map) -> list[tuple[str, float, int]]:
    return [(d, lp, t) for d in live.designs for lp in live.loads for t in live.triggers if live.cell(d, lp, t)]


def map_table(sim: Map | None, live: Map, comparable: bool) -> Table:
    rows = []
    for d, lp, t in live_cells(live):
        sim_cell = sim.cell(d, lp, t) if sim is not None and comparable else None
        live_cell = live.cell(d, lp, t)
        agree = ("n/a" if sim_cell is None or not sim_cell.states or live_cell is None
                 else "yes" if sim_cell.majority == _live_state(live_cell) else "no")
        rows.append([d, f"{lp:g}", f"{t} s", _cell_words(live_cell), _sim_words(sim_cell), agree])
    return Table("Metastability cells, measured versus simulated",
                 ["design", "load", "spike", "live", "simulated (most seeds)", "agree"], rows,
                 caption="Live: one run per cell against the service; 'served after' is the goodput share over the "
                         "hold window, 'retries per request' the attempts per request offered, less one. Simulated: "
                         "the state most seeds reached, with how many.")


def map_sentences(sim: Map | None, live: Map, comparable: bool) -> list[str]:
    cells = live_cells(live)
    if not cells:
        return []
    if sim is None:
        return [f"{len(cells)} map cells ran live; there is no simulated map to set them beside: run "
                "`saaslab sim retries`."]
    if not comparable:
        return [f"{len(cells)} map cells ran live, on another timeline than the simulation's map (a quick run against "
                "a full one, or the reverse), so their states are not compared: run `saaslab sim retries` with the "
                "same --quick setting as the live run."]
    pairs = [(d, lp, t, sim.cell(d, lp, t), live.cell(d, lp, t)) for d, lp, t in cells]
    judged = [(d, lp, t, s, m) for d, lp, t, s, m in pairs if s is not None and s.states and m is not None]
    agree = [(d, lp, t) for d, lp, t, s, m in judged if s.majority == _live_state(m)]
    differ = [f"{d} at load {lp:g} with a {t} s spike (live {_live_state(m)}, simulated {s.majority})"
              for d, lp, t, s, m in judged if s.majority != _live_state(m)]
    out = [f"Of the {len(judged)} map cells tried live that the simulation also ran, {len(agree)} reached the state "
           "the simulation's seeds mostly reached" + (f"; they differ for {fmt_list(differ)}" if differ else "") + "."]
    stuck = [(d, lp, t, m) for d, lp, t, s, m in judged if s.majority == "collapsed"]
    if stuck:
        held = [f"{d} at load {lp:g} ({t} s)" for d, lp, t, m in stuck if _live_state(m) == "collapsed"]
        out.append(f"Where the simulation says a design stays collapsed ({len(stuck)} cell{'s' * (len(stuck) != 1)}), the "
                   f"live service stayed collapsed in {len(held)}" + (f": {fmt_list(held)}" if held else "") + ".")
    guarded = [(d, m) for d, lp, t, s, m in judged if d.endswith(("+budget", "+breaker"))]
    if guarded:
        amps = [m.get("meta_amplification").mean for _, m in guarded if m.get("meta_amplification").known]
        plain = [m.get("meta_amplification").mean for d, lp, t, s, m in judged
                 if not d.endswith(("+budget", "+breaker")) and m.get("meta_amplification").known]
        if amps and plain:
            out.append(f"Live, a budget or a breaker kept attempts to at most {fmt_num(max(amps))} per request, against "
                       f"up to {fmt_num(max(plain))} for retries guarded by backoff alone.")
    return out


def goodput_figure(sim: Map | None, live: Map, comparable: bool, live_params: dict[str, Any]) -> Figure | None:
    cells = live_cells(live)
    if not cells:
        return None
    meta = live_params.get("metastability") or {}
    at = int(meta.get("trigger_at_s", 5))
    cols = min(3, len(cells))
    rows = math.ceil(len(cells) / cols)
    fig = MplFigure(figsize=(3.6 * cols, 2.6 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (d, lp, t) in zip(axes, cells, strict=False):
        seconds = range(1, at + t + int(meta.get("recovery_s", 10)) + int(meta.get("hold_s", 5)))
        for source, m, style in (("live", live, "-"), ("simulated", sim if comparable else None, "--")):
            cell = m.cell(d, lp, t) if m is not None else None
            if cell is None:
                continue
            ys = [cell.get(goodput_metric(s, t)).mean for s in seconds]
            ax.plot(list(seconds), ys, style, marker="o", markersize=2, label=source)
        ax.axvspan(at, at + t, color="#d9534f", alpha=0.15, label="spike")
        ax.set_ylim(-5, 105)
        ax.set_xlabel("second of the run (arrival)")
        ax.set_ylabel("goodput share (%)")
        ax.set_title(f"{d}, load {lp:g}, {t} s spike", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    for ax in axes[len(cells):]:
        ax.set_visible(False)
    return Figure("Goodput share over time, live and simulated", figure_data_uri(fig),
                  "Share of the requests arriving in each second that were served within the timeout; the shaded "
                  "band is the latency spike. Simulated: mean over seeds of the same cell.")


def contention_figure(sim: Contention | None, live: Contention) -> Figure:
    fig = MplFigure(figsize=(4.2 * len(live.clients), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(live.clients), squeeze=False)).ravel()
    for ax, n in zip(axes, live.clients, strict=True):
        x = np.arange(len(live.policies))
        for offset, source, c, marker in ((-0.15, "simulated", sim, "s"), (0.15, "live", live, "D")):
            if c is None:
                continue
            cells = [c.get(p, n, "contention_calls") for p in live.policies]
            ax.errorbar(x + offset, [s.mean for s in cells], yerr=[0 if math.isnan(s.ci95) else s.ci95 for s in cells],
                        fmt=marker, capsize=3, label=source)
        ax.set_xticks(x, live.policies, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("backoff policy")
        ax.set_ylabel("write calls until every client succeeded")
        ax.set_title(f"{n} clients", fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return Figure("Contention: write calls, simulated and live", figure_data_uri(fig),
                  f"Mean over seeds with 95% CI bars, at the client counts run live ({client_counts(live.clients)}).")
