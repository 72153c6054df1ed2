"""The retries report: backoff under contention (Brooker's experiment) and the metastability map.

Reads the rows of `scenarios/retries.py`. Retries is a simulation-only pattern: there is no live
face, so the report says so instead of showing an empty simulated-versus-measured table. Every
conclusion is a sentence filled in from the numbers, including whether they agree with Marc
Brooker's published findings (2015 for contention; 2022 for open systems).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure as MplFigure

from saaslab.report import (
    Figure,
    PatternData,
    Report,
    RunData,
    Summary,
    Table,
    decimals_for,
    figure_data_uri,
    fmt_g,
    fmt_list,
    fmt_num,
    ordered,
    summarise,
)
from scenarios.retries import split_trigger_metric

PATTERN = "retries"
QUESTION = ("Which backoff policy does the least work and finishes soonest under contention, and which "
            "policies keep a system from staying collapsed after a latency spike?")
POLICY_ORDER = ("none", "fixed", "exponential", "equal_jitter", "full_jitter", "decorrelated_jitter")
JITTERED = ("equal_jitter", "full_jitter", "decorrelated_jitter")
GROWING = ("exponential", *JITTERED)
"""Policies whose wait grows with the attempt: the ones Brooker compares on time."""
META_ORDER = ("no_retry", "none", "exponential", "full_jitter", "full_jitter+budget", "full_jitter+breaker")
PLAIN_RETRIES = ("none", "exponential", "full_jitter")
"""Designs that retry with a policy alone: no budget, no breaker."""
MIN_SEEDS = 5
LITTLE = 0.25
"""Backoff 'does little' when it spares at most this share of the cells where retrying at once collapsed."""
STATES = ("recovered", "draining", "collapsed")
STATE_COLOURS = ("#5fb36a", "#f0b63c", "#d9534f")

MISSING = Summary(mean=float("nan"), ci95=float("nan"), n=0)


# --- the data, summarised -----------------------------------------------------------------------

@dataclass
class Contention:
    """Brooker's experiment: per (policy, clients), calls and completion time over seeds."""

    cells: dict[tuple[str, int, str], Summary]
    policies: list[str]
    clients: list[int]
    seeds: int

    @classmethod
    def of(cls, run: RunData) -> Contention:
        rows = [r for r in run.rows if r.metric.startswith("contention_")]
        cells = {(d, int(lp), m): s for (d, lp, m), s in
                 summarise(rows, by=("design", "load_point", "metric")).items()}
        return cls(cells=cells, policies=ordered({r.design for r in rows}, POLICY_ORDER),
                   clients=sorted({int(r.load_point) for r in rows}), seeds=len({r.seed for r in rows}))

    def get(self, policy: str, clients: int, metric: str) -> Summary:
        return self.cells.get((policy, clients, metric), MISSING)

    def ranking(self, clients: int, metric: str, among: Iterable[str] | None = None) -> list[tuple[str, Summary]]:
        """Policies with a known value, lowest mean first."""
        names = self.policies if among is None else [p for p in self.policies if p in set(among)]
        known = [(p, self.get(p, clients, metric)) for p in names]
        return sorted([(p, s) for p, s in known if s.known], key=lambda ps: ps[1].mean)


@dataclass
class Cell:
    """One (design, load, trigger) of the map: each seed's state and the metrics' summaries."""

    states: list[str]
    metrics: dict[str, Summary]

    def count(self, state: str) -> int:
        return self.states.count(state)

    @property
    def majority(self) -> str:
        """The most common state; ties go to the worse one (collapsed over draining over recovered)."""
        return max(reversed(STATES), key=self.count)

    def get(self, metric: str) -> Summary:
        return self.metrics.get(metric, MISSING)


@dataclass
class Map:
    """The metastability map: (design, load, trigger s) -> Cell, plus the per-run baseline."""

    cells: dict[tuple[str, float, int], Cell]
    before: dict[tuple[str, float], Summary]
    designs: list[str]
    loads: list[float]
    triggers: list[int]
    seeds: int

    @classmethod
    def of(cls, run: RunData) -> Map:
        values: dict[tuple[str, float, int], dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        before_rows = []
        for r in run.rows:
            if not r.metric.startswith("meta_"):
                continue
            split = split_trigger_metric(r.metric)
            if split is None:
                before_rows.append(r)
                continue
            name, trigger = split
            values[(r.design, round(r.load_point, 6), trigger)][name][r.seed] = r.value
        cells = {}
        for key, by_metric in values.items():
            seeds = sorted(set().union(*(v.keys() for v in by_metric.values())))
            states = [_state(by_metric, s) for s in seeds]
            cells[key] = Cell(states=[s for s in states if s is not None],
                              metrics={m: Summary.of(v.values()) for m, v in by_metric.items()})
        before = {(d, round(lp, 6)): s for (d, lp), s in
                  summarise(before_rows, by=("design", "load_point")).items()}
        return cls(cells=cells, before=before, designs=ordered({k[0] for k in cells}, META_ORDER),
                   loads=sorted({k[1] for k in cells}), triggers=sorted({k[2] for k in cells}),
                   seeds=len({r.seed for r in run.rows if r.metric.startswith("meta_")}))

    def cell(self, design: str, load: float, trigger: int) -> Cell | None:
        return self.cells.get((design, round(load, 6), trigger))

    def where(self, design: str, state: str) -> list[tuple[float, int]]:
        """(load, trigger) of the cells whose majority state is `state`."""
        return [(lp, t) for lp in self.loads for t in self.triggers
                if (c := self.cell(design, lp, t)) is not None and c.states and c.majority == state]

    def size(self, design: str) -> int:
        return sum(1 for lp in self.loads for t in self.triggers if self.cell(design, lp, t) is not None)


def _state(by_metric: dict[str, dict[int, float]], seed: int) -> str | None:
    recovered = by_metric.get("meta_recovered", {}).get(seed)
    collapsed = by_metric.get("meta_collapsed", {}).get(seed)
    if recovered is None or collapsed is None:
        return None
    return "recovered" if recovered else "collapsed" if collapsed else "draining"


# --- numbers as words ---------------------------------------------------------------------------

def _ci(s: Summary) -> str:
    return "" if math.isnan(s.ci95) else f" ± {fmt_num(s.ci95, decimals_for(s.mean))}"


def _calls(s: Summary) -> str:
    return f"{fmt_num(s.mean)}{_ci(s)} calls"


def _secs(ms: Summary) -> str:
    """A completion time, summarised in ms, as seconds."""
    s = Summary(ms.mean / 1000, ms.ci95 / 1000, ms.n)
    return f"{fmt_num(s.mean)}{_ci(s)} s"


def _separated(a: Summary, b: Summary) -> bool:
    """Both have intervals and they do not overlap."""
    return not (math.isnan(a.ci95) or math.isnan(b.ci95)) and (a.high < b.low or b.high < a.low)


def _counts(clients: list[int]) -> str:
    return fmt_list([str(n) for n in clients])


def _cells(cells: list[tuple[float, int]]) -> str:
    """Exactly which cells: 'load 0.5 with 4 and 8 s triggers; loads 0.7 and 0.9 with 2, 4 and 8 s triggers'."""
    by_load: dict[float, list[int]] = defaultdict(list)
    for lp, t in sorted(cells):
        by_load[lp].append(t)
    groups: dict[tuple[int, ...], list[float]] = defaultdict(list)
    for lp, triggers in by_load.items():
        groups[tuple(triggers)].append(lp)
    parts = []
    for triggers, loads in groups.items():
        where = f"load {loads[0]:g}" if len(loads) == 1 else f"loads {fmt_list([f'{lp:g}' for lp in loads])}"
        article = "an" if str(triggers[0]).startswith("8") or triggers[0] in (11, 18) else "a"
        what = f"{article} {triggers[0]} s trigger" if len(triggers) == 1 else f"{fmt_list([str(t) for t in triggers])} s triggers"
        parts.append(f"{where} with {what}")
    return "; ".join(parts)


def _of(n: int, total: int, noun: str) -> str:
    return f"{n} of {total} {noun}"


# --- conclusions: contention --------------------------------------------------------------------

def _work_sentences(c: Contention) -> list[str]:
    """Who did the least work at each client count, and whether that is Brooker's finding."""
    statuses: dict[int, tuple[str, str, Summary, Summary]] = {}
    for n in c.clients:
        ranked = c.ranking(n, "contention_calls")
        if len(ranked) < 2:
            continue
        (best, b), (second, s2) = ranked[0], ranked[1]
        fj = c.get("full_jitter", n, "contention_calls")
        if not fj.known:
            continue
        if best == "full_jitter":
            statuses[n] = ("least_clear" if _separated(b, s2) else "least_overlap", second, b, s2)
        else:
            statuses[n] = ("beaten" if _separated(b, fj) else "tied", best, fj, b)
    if not statuses:
        return ["The contention experiment has no full_jitter rows to compare, so who does the least work stays open."]
    total = len(statuses)
    least = [n for n, st in statuses.items() if st[0].startswith("least")]
    out = [f"full_jitter made the fewest write calls at {_of(len(least), total, 'client counts')}"
           + (f" ({_counts(least)})" if least and len(least) < total else "") + "."]
    for n, (status, other, fj, o) in statuses.items():
        if status == "least_overlap":
            out.append(f"At {n} clients its lead over {other} ({_calls(fj)} against {_calls(o)}) is within the 95% CIs.")
        elif status in ("tied", "beaten"):
            how = "beyond" if status == "beaten" else "within"
            out.append(f"At {n} clients {other} made fewer ({_calls(o)} against {_calls(fj)}), {how} the 95% CIs.")
    beaten = [n for n, st in statuses.items() if st[0] == "beaten"]
    if len(least) == total and all(st[0] == "least_clear" for st in statuses.values()):
        verdict = "This agrees with Brooker (2015), who found that full jitter does the least work."
    elif not beaten:
        verdict = ("This agrees with Brooker (2015), who found that full jitter does the least work, within the "
                   "95% CIs: no policy did clearly less anywhere.")
    elif len(beaten) < total / 2:
        verdict = (f"This partly agrees with Brooker (2015), who found that full jitter does the least work: another "
                   f"policy did clearly less at {_counts(beaten)} clients.")
    else:
        verdict = (f"This disagrees with Brooker (2015), who found that full jitter does the least work: another "
                   f"policy did clearly less at {_counts(beaten)} clients.")
    out.append(verdict)
    return out


def _fixed_clause(c: Contention, n: int) -> str:
    calls, ms = c.get("fixed", n, "contention_calls"), c.get("fixed", n, "contention_completion_ms")
    if not (calls.known and ms.known):
        return ""
    return f" A fixed wait behaved much the same: {_calls(calls)} and {_secs(ms)} at {n} clients."


def _time_sentences(c: Contention) -> list[str]:
    out = []
    n_max = c.clients[-1]
    soonest = c.ranking(n_max, "contention_completion_ms", GROWING)
    if soonest:
        best, b = soonest[0]
        runner = (f", ahead of {soonest[1][0]} ({_secs(soonest[1][1])})" if len(soonest) > 1 else "")
        out.append(f"Of the policies whose wait grows, {best} finished soonest at {n_max} clients: {_secs(b)}{runner}.")
    dj = [(n, c.get("decorrelated_jitter", n, "contention_completion_ms"), c.get("full_jitter", n, "contention_completion_ms"))
          for n in c.clients]
    dj = [(n, d, f) for n, d, f in dj if d.known and f.known]
    if dj:
        sooner = [n for n, d, f in dj if d.mean < f.mean]
        clear = [n for n, d, f in dj if d.mean < f.mean and _separated(d, f)]
        n, d, f = dj[-1]
        agree = ("as Brooker (2015) found (decorrelated finishes slightly sooner)" if len(sooner) > len(dj) / 2
                 else "unlike Brooker (2015), who found decorrelated finishes slightly sooner")
        out.append(f"decorrelated_jitter finished sooner than full_jitter at {_of(len(sooner), len(dj), 'client counts')} "
                   f"({len(clear)} beyond the 95% CIs; at {n} clients {_secs(d)} against {_secs(f)}), {agree}.")
    none_fast = [n for n in c.clients if (r := c.ranking(n, "contention_completion_ms")) and r[0][0] == "none"]
    none_most = [n for n in c.clients if (r := c.ranking(n, "contention_calls")) and r[-1][0] == "none"]
    none_calls, fj_calls = c.get("none", n_max, "contention_calls"), c.get("full_jitter", n_max, "contention_calls")
    if none_calls.known and fj_calls.known:
        fast_but_wasteful = len(none_fast) > len(c.clients) / 2 and len(none_most) > len(c.clients) / 2
        out.append(f"Retrying at once (none) finished soonest at {_of(len(none_fast), len(c.clients), 'client counts')} "
                   f"and made the most calls at {_of(len(none_most), len(c.clients), 'client counts')} "
                   f"({_calls(none_calls)} at {n_max} clients, {none_calls.mean / fj_calls.mean:.1f}x full_jitter's): "
                   + ("fast but wasteful, as Brooker found." if fast_but_wasteful
                      else "not the 'fast but wasteful' pattern Brooker found.")
                   + _fixed_clause(c, n_max))
    exp_slowest = [n for n in c.clients if (r := c.ranking(n, "contention_completion_ms")) and r[-1][0] == "exponential"]
    more_than_jitter = [n for n in c.clients
                        if c.get("exponential", n, "contention_calls").known
                        and all(c.get("exponential", n, "contention_calls").mean > c.get(p, n, "contention_calls").mean
                                for p in JITTERED if c.get(p, n, "contention_calls").known)]
    fewer_than_none = [n for n in c.clients
                       if c.get("exponential", n, "contention_calls").mean < c.get("none", n, "contention_calls").mean]
    exp_t = c.get("exponential", n_max, "contention_completion_ms")
    if exp_t.known:
        total = len(c.clients)
        sentence = (f"Exponential backoff without jitter took the longest at {_of(len(exp_slowest), total, 'client counts')} "
                    f"({_secs(exp_t)} at {n_max} clients) and made more calls than every jittered policy at "
                    f"{_of(len(more_than_jitter), total, 'client counts')}")
        if len(exp_slowest) == total and len(more_than_jitter) == total:
            sentence += ", as Brooker found"
        if "none" in c.policies:
            sentence += (f"; against retrying at once it made fewer calls at {_of(len(fewer_than_none), total, 'client counts')}"
                         + (", so 'worst on both' holds against the jittered policies, not against no backoff"
                            if fewer_than_none else ""))
        out.append(sentence + ".")
    return out


# --- conclusions: metastability -----------------------------------------------------------------

def _map_sentences(m: Map, recovery_s: Any, share: Any) -> list[str]:
    out = []
    deadline = f"{recovery_s:g} s" if isinstance(recovery_s, int | float) else "the recovery deadline"
    pct = f"{share * 100:.0f}%" if isinstance(share, int | float) else "the threshold"
    out.append(f"On the metastability map ({len(m.loads)} loads x {len(m.triggers)} trigger lengths, {m.seeds} seed(s) "
               f"per cell; a cell takes the state most of its seeds reached), a system *recovered* when its goodput "
               f"share was back to at least {pct} within {deadline} of the spike's end.")
    before = [(s.mean, d, lp) for (d, lp), s in m.before.items() if s.known]
    if before:
        low, d_low, lp_low = min(before)
        unhealthy = sorted({(d, lp) for v, d, lp in before if isinstance(share, int | float) and v < 100 * share})
        out.append(f"Before the spike the lowest goodput share was {fmt_num(low, 1)}% ({d_low} at load {lp_low:g})"
                   + (f"; {fmt_list([f'{d} at load {lp:g}' for d, lp in unhealthy])} fell short of {pct} before any "
                      "trigger" if unhealthy else ", so every cell started healthy") + ".")
    never, collapsed = [], []
    for d in m.designs:
        total = m.size(d)
        col, rec, dra = (m.where(d, s) for s in ("collapsed", "recovered", "draining"))
        if col:
            collapsed.append(d)
            out.append(f"{d} stayed collapsed in {_of(len(col), total, 'cells')} ({_cells(col)}), recovered in {len(rec)}"
                       + (f" and was still draining in {len(dra)}" if dra else "") + ".")
        else:
            never.append(d)
            out.append(f"{d} never stayed collapsed: it recovered in {_of(len(rec), total, 'cells')}"
                       + (f" and was still draining its backlog in {len(dra)} ({_cells(dra)})" if dra else "") + ".")
    plain = [d for d in PLAIN_RETRIES if d in m.designs]
    backoff_little = None
    if "none" in plain and len(plain) > 1:
        base = len(m.where("none", "collapsed"))
        backed = {d: len(m.where(d, "collapsed")) for d in plain if d != "none"}
        (first, n_first), *rest = backed.items()
        counts = (f"{fmt_list([f'{first} collapsed in {n_first} cells', *(f'{d} in {n}' for d, n in rest)])}, "
                  f"against {base} when retrying at once")
        spared = max(base - n for n in backed.values())
        backoff_little = spared <= LITTLE * base
        if spared <= 0:
            out.append(f"Backoff alone did not prevent collapse: {counts}.")
        elif backoff_little:
            out.append(f"Backoff alone barely changed the map: {counts}. A wait delays a retry but does "
                       "not cancel it, so the same attempts still arrive.")
        else:
            out.append(f"Backoff reduced collapse: {counts}.")
    amp = _worst("meta_amplification", m, plain)
    amp_budget = _worst("meta_amplification", m, [d for d in m.designs if d.endswith("+budget")])
    if amp is not None:
        sentence = (f"Without a budget or breaker, clients sent up to {fmt_num(amp[0])} attempts per request ({amp[1]} at "
                    f"load {amp[2]:g}, {amp[3]} s trigger)")
        if amp_budget is not None:
            sentence += f"; with a retry budget the worst was {fmt_num(amp_budget[0])} ({amp_budget[1]})"
        out.append(sentence + ".")
    guarded = [d for d in m.designs if d.endswith(("+budget", "+breaker"))]
    if plain and guarded:
        plain_collapsed = [d for d in plain if d in collapsed]
        guarded_never = [d for d in guarded if d in never]
        if plain_collapsed and len(guarded_never) == len(guarded) and backoff_little:
            out.append("This agrees with Brooker (2022): in an open system backoff alone does little, while a retry "
                       "budget (or a breaker) caps the extra load retries add, so the system can drain.")
        elif not plain_collapsed:
            out.append("No plain retry design collapsed on this map, so it cannot test Brooker's (2022) point that "
                       "backoff alone does little in an open system: try higher loads or longer triggers.")
        else:
            failed = [d for d in guarded if d not in never]
            why = []
            if failed:
                why.append(f"{fmt_list(failed)} collapsed despite {'its guard' if len(failed) == 1 else 'their guards'}")
            if backoff_little is False:
                why.append("backoff alone spared more than a quarter of the cells where retrying at once collapsed")
            out.append(f"This only partly agrees with Brooker (2022), for whom backoff alone does little in an open "
                       f"system while a budget caps amplification: {'; '.join(why) or 'the map is too small to tell'}.")
    return out


def _worst(metric: str, m: Map, designs: list[str]) -> tuple[float, str, float, int] | None:
    """The highest mean of a per-trigger metric over the designs' cells: (value, design, load, trigger)."""
    found = [(c.get(metric).mean, d, lp, t) for d in designs for lp in m.loads for t in m.triggers
             if (c := m.cell(d, lp, t)) is not None and c.get(metric).known]
    return max(found) if found else None


def _headline(c: Contention | None, m: Map | None) -> str | None:
    parts = []
    if c is not None and c.clients:
        n = c.clients[-1]
        work = c.ranking(n, "contention_calls")
        soon = c.ranking(n, "contention_completion_ms", GROWING)
        if work and soon:
            parts.append(f"Under contention ({n} clients), {work[0][0]} did the least work ({_calls(work[0][1])}) and "
                         f"{soon[0][0]} finished soonest of the policies whose wait grows ({_secs(soon[0][1])})")
    if m is not None and m.designs:
        never = [d for d in m.designs if not m.where(d, "collapsed")]
        stuck = [d for d in m.designs if m.where(d, "collapsed")]
        if never and stuck:
            parts.append(f"after a latency spike, {fmt_list(never)} never stayed collapsed while "
                         f"{fmt_list(stuck)} did")
        elif never:
            parts.append(f"after a latency spike, no design stayed collapsed ({fmt_list(never)})")
        elif stuck:
            parts.append(f"after a latency spike, every design stayed collapsed somewhere ({fmt_list(stuck)})")
    if not parts:
        return None
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


# --- tables and figures -------------------------------------------------------------------------

def _contention_tables(c: Contention) -> list[Table]:
    caption = "Mean over seeds ± half-width of the 95% confidence interval (Student's t); each seed is a batch of trials."
    return [Table(title, ["clients", *c.policies],
                  [[str(n), *(c.get(p, n, metric).text() for p in c.policies)] for n in c.clients], caption=caption)
            for title, metric in (("Contention: write calls until every client succeeded", "contention_calls"),
                                  ("Contention: time to completion (ms)", "contention_completion_ms"))]


def _cell_text(cell: Cell | None) -> str:
    if cell is None or not cell.states:
        return "n/a"
    state = cell.majority
    detail = (f"{fmt_num(cell.get('meta_recovery_s').mean)} s" if state == "recovered"
              else f"{fmt_num(cell.get('meta_goodput_after_pct').mean, 0)}% served")
    return f"{state} {cell.count(state)}/{len(cell.states)} ({detail})"


def _map_tables(m: Map) -> list[Table]:
    cols = ["design", "load", *(f"{t} s trigger" for t in m.triggers)]
    states = [[d, f"{lp:g}", *(_cell_text(m.cell(d, lp, t)) for t in m.triggers)]
              for d in m.designs for lp in m.loads]
    load = [[d, f"{lp:g}", *(_load_text(m.cell(d, lp, t)) for t in m.triggers)] for d in m.designs for lp in m.loads]
    return [
        Table("Metastability map: state after the spike", cols, states,
              caption="State reached by most seeds, with how many; for recovered cells the mean time from the spike's "
                      "end to recovery, otherwise the goodput share over the hold window."),
        Table("Metastability map: load that retries add", cols, load,
              caption="Attempts per request over the run, and attempts sent per second over the hold window as a "
                      "multiple of capacity (at 1x or more the server cannot drain): means over seeds."),
    ]


def _load_text(cell: Cell | None) -> str:
    if cell is None:
        return "n/a"
    amp, after = cell.get("meta_amplification"), cell.get("meta_attempt_load_after")
    return f"{fmt_num(amp.mean)} per request, {fmt_num(after.mean)}x after"


def _contention_figure(c: Contention) -> Figure:
    fig = MplFigure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric, label, scale in ((axes[0], "contention_calls", "write calls (work)", 1.0),
                                     (axes[1], "contention_completion_ms", "time to completion (s)", 1000.0)):
        for p in c.policies:
            cells = [c.get(p, n, metric) for n in c.clients]
            xs = [n for n, s in zip(c.clients, cells, strict=True) if s.known]
            ys = [s.mean / scale for s in cells if s.known]
            errs = [0.0 if math.isnan(s.ci95) else s.ci95 / scale for s in cells if s.known]
            ax.errorbar(xs, ys, yerr=errs, marker="o", markersize=3, capsize=2, label=p)
        ax.set_xlabel("clients contending on one row")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    return Figure("Work and time to completion under contention", figure_data_uri(fig),
                  "Mean over seeds with 95% CI error bars; time on a log scale. Brooker's 2015 figures show the same "
                  "two quantities for his five policies.")


def _map_figure(m: Map) -> Figure:
    cols = min(3, len(m.designs))
    rows = math.ceil(len(m.designs) / cols)
    fig = MplFigure(figsize=(3.4 * cols, 2.6 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    cmap = ListedColormap(list(STATE_COLOURS))
    for ax, d in zip(axes, m.designs, strict=False):
        grid = np.full((len(m.loads), len(m.triggers)), np.nan)
        for i, lp in enumerate(m.loads):
            for j, t in enumerate(m.triggers):
                cell = m.cell(d, lp, t)
                if cell is not None and cell.states:
                    grid[i, j] = STATES.index(cell.majority)
                    ax.text(j, i, f"{cell.majority[0].upper()} {cell.count(cell.majority)}/{len(cell.states)}",
                            ha="center", va="center", fontsize=8)
        ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=2.5, origin="lower", aspect="auto")
        ax.set_xticks(range(len(m.triggers)), [f"{t}" for t in m.triggers])
        ax.set_yticks(range(len(m.loads)), [f"{lp:g}" for lp in m.loads])
        ax.set_xlabel("trigger length (s)")
        ax.set_ylabel("load (x capacity)")
        ax.set_title(d, fontsize=10)
    for ax in axes[len(m.designs):]:
        ax.set_visible(False)
    return Figure("Metastability map", figure_data_uri(fig),
                  "Per design: each cell is a load and a latency-spike length, coloured by the state most seeds "
                  "reached: green R recovered, amber D still draining, red C collapsed (retries alone keep the "
                  "server at or above capacity); the fraction is how many seeds reached it.")


# --- text about the setup -----------------------------------------------------------------------

DESIGN_TEXT = {
    "none": "No backoff: retry at once (contention and map).",
    "fixed": "A fixed wait of base between attempts (contention).",
    "exponential": "Capped exponential backoff, min(cap, base·2^n), no jitter.",
    "equal_jitter": "Equal jitter: v/2 + U(0, v/2) with v the capped exponential term.",
    "full_jitter": "Full jitter: U(0, v) with v the capped exponential term.",
    "decorrelated_jitter": "Decorrelated jitter: min(cap, U(base, 3·previous wait)).",
    "no_retry": "Map baseline: one attempt, never retried.",
    "full_jitter+budget": ("Full jitter, with a retry budget per client host: retries at most a share of successes "
                           "plus a small floor rate (a token bucket refilled by successes)."),
    "full_jitter+breaker": ("Full jitter, with a circuit breaker per client host: after consecutive timeouts calls "
                            "fail fast until a trial call succeeds."),
}


def _workload(params: dict[str, Any]) -> list[str]:
    lines = []
    con = params.get("contention") or {}
    if con:
        net = con.get("network_delay_ms") or {}
        trials = con.get("trials_per_seed")
        seeds = len(params.get("seeds") or [])
        lines.append(f"Contention (Brooker 2015): N clients (N = {', '.join(map(str, con.get('clients', [])))}) each "
                     f"update one row once under optimistic concurrency; each message takes |Normal({fmt_g(net.get('mean', 10))} ms, "
                     f"{fmt_g(net.get('sd', 2))} ms)|; base {fmt_g(con.get('base_ms', 5))} ms, cap {fmt_g(con.get('cap_ms', 2000))} ms; "
                     "clients never give up.")
        if trials and seeds:
            lines.append(f"Each seed averages {trials} trials, so each point rests on {trials * seeds} trials "
                         f"({seeds} seeds); Brooker averaged 100 trials per point.")
    meta = params.get("metastability") or {}
    if meta:
        lines.append(f"Metastability: Poisson arrivals at loads {', '.join(fmt_g(x) for x in meta.get('loads', []))} of "
                     f"capacity ({fmt_g(meta.get('capacity_rps', 0))} requests/s: {meta.get('slots')} FIFO slots, "
                     f"{fmt_g(meta.get('service_ms', 0))} ms + {fmt_g(meta.get('overhead_ms', 0))} ms mean overhead per request) "
                     f"from {meta.get('client_hosts')} client hosts; a client abandons an attempt after "
                     f"{fmt_g(meta.get('timeout_ms', 0))} ms, but the server still does the work.")
        lines.append(f"Trigger: from t={fmt_g(meta.get('trigger_at_s', 0))} s, service time x{fmt_g(meta.get('spike_factor', 1))} "
                     f"for {', '.join(map(str, meta.get('triggers_s', [])))} s. Retrying designs make at most "
                     f"{meta.get('max_attempts')} attempts, backoff base {fmt_g(meta.get('base_ms', 0))} ms, cap "
                     f"{fmt_g(meta.get('cap_ms', 0))} ms.")
        budget, breaker = meta.get("budget") or {}, meta.get("breaker") or {}
        if budget:
            lines.append(f"Retry budget: {budget.get('ratio_pct')}% of successes plus {budget.get('min_per_s')} retry/s, "
                         f"banking up to {budget.get('burst')}. Breaker: opens after {breaker.get('fail_max')} "
                         f"consecutive timeouts, one trial after {fmt_g(breaker.get('reset_timeout_ms', 0))} ms.")
        lines.append(f"Recovered: every 1 s bin of arrivals from {fmt_g(meta.get('recovery_s', 10))} s after the spike "
                     f"to the end of the run ({fmt_g(meta.get('hold_s', 5))} s later) has a goodput share (requests served "
                     f"by any attempt within the timeout, over requests offered) of at least "
                     f"{fmt_g(100 * meta.get('recovered_share', 0.9))}%. Collapsed: not recovered, and clients still send "
                     "attempts at capacity or more over that window. Otherwise: still draining.")
    if not lines:
        lines.append("The run recorded no workload parameters (run.json is missing or has none).")
    return lines


# --- the builder --------------------------------------------------------------------------------

SIM_ONLY = ("Retries is a simulation-only pattern: there is no live face to measure, so there is no simulated-versus-"
            "measured table. The client cores it simulates (reference_impl/retries/core.py) are the ones the load "
            "harness retries with.")
NO_INVARIANTS = ("No invariant checks: a simulation-only pattern records no live history and keeps no state in "
                 "PostgreSQL or Redis to read back.")


def build(data: PatternData) -> Report:
    run = data.sim
    params = run.parameters if run else {}
    common = {"pattern": PATTERN, "question": QUESTION, "workload": _workload(params), "invariants_note": NO_INVARIANTS,
              "sim_vs_live_note": SIM_ONLY, "simulation_only": True}
    if run is None or not run.rows:
        where = f"in {run.directory} " if run else ""
        return Report(designs={}, conclusions=[f"There are no simulated results {where}to report on: run "
                                               f"`saaslab sim {PATTERN}` first."], **common)
    contention, meta = Contention.of(run), Map.of(run)
    notes = []
    seeds = max(contention.seeds, meta.seeds)
    if seeds < MIN_SEEDS:
        notes.append(f"The simulation used {seeds} seed(s); conclusions need at least {MIN_SEEDS} "
                     f"(`saaslab sim {PATTERN} --seeds {MIN_SEEDS}`), so the intervals here are wide or missing.")
    conclusions: list[str] = []
    tables: list[Table] = []
    figures: list[Figure] = []
    has_contention, has_map = bool(contention.clients), bool(meta.designs)
    headline = _headline(contention if has_contention else None, meta if has_map else None)
    if headline:
        conclusions.append(headline)
    if has_contention:
        conclusions += _work_sentences(contention) + _time_sentences(contention)
        tables += _contention_tables(contention)
        figures.append(_contention_figure(contention))
    else:
        notes.append("The run has no contention rows, so Brooker's experiment is not reported.")
    if has_map:
        m = params.get("metastability") or {}
        conclusions += _map_sentences(meta, m.get("recovery_s"), m.get("recovered_share"))
        tables += _map_tables(meta)
        figures.append(_map_figure(meta))
    else:
        notes.append("The run has no metastability rows, so there is no map.")
    present = ordered({*contention.policies, *meta.designs}, (*POLICY_ORDER, *META_ORDER))
    return Report(designs={d: DESIGN_TEXT.get(d, "(no description)") for d in present}, conclusions=conclusions,
                  tables=tables, figures=figures, notes=notes, **common)
