"""The idempotency report: how often each design charges a payment twice, or leaves a charge without
its payment row, under client timeouts, retries, provider faults and crashes, and what the
protection costs.

The tables, plots and most conclusions come from `scenarios/idempotency.py` (its docstring names
every metric and the model): only a simulation has the seeds for confidence intervals across load
levels. The simulated-versus-measured table sets duplicates per 10,000 payments (and orphans, and
the p99) beside a live run's, like for like: its simulated side is the simulation's replay of the
live load test's plan (`scenarios.idempotency.LIVE_PLAN`, the `aslive_*` rows), the same clients,
double clicks, fault phases, crashes and reconcile pass, not the simulation's own milder workload
(used, and marked, only where a sweep has no replay at that load point).

The live schema (what `saaslab load idempotency` writes; loadtests/idempotency.py records it):

* `live/results.csv`, rows of the results schema with source "live", pattern "idempotency",
  design in {none, redis, postgres}, `seed` the live run's seed (one row per cell), `load_point` as
  in the simulation (offered logical payments per second over the service's payment capacity),
  tenant "*", and the metrics
  - `duplicates_per_10k` (unit per_10k): per key, the larger of (succeeded charges - 1) and
    (payment rows - 1), when positive, summed, per 10,000 logical payments (distinct keys sent),
    from the provider's charges and the ledger read back after the completer has run;
  - `orphans_per_10k` (per_10k): `no_orphan_charges` violations per 10,000 logical payments;
  - `latency_p99` (ms): per HTTP attempt that got an answer, from send to answer (HDR histogram).
  Optional, shown when present: `payments`, `attempts` (requests), `conflicts_pct` (percent),
  `retries_per_request` (ratio), `replay_mismatch` (requests), `checks_valid` (bool), `errors`,
  `timeouts`, `dropped` (requests).
* `live/check.json`, the `CheckResult`s of `reference_impl.idempotency.invariants.check` over the
  live history and the final state, one per check and design, named `<check>[<design>]` (for
  example `exactly_one_effect[none]`); a name without brackets applies to every design of the run.

Without a live run the measured columns read "no live run yet" and a conclusion says how to make one.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure as MplFigure

from saaslab.history import CheckResult
from saaslab.report import (
    Figure,
    PatternData,
    Report,
    RunData,
    Summary,
    Table,
    checks_sentence,
    figure_data_uri,
    fmt_g,
    fmt_gap,
    fmt_list,
    fmt_load,
    fmt_loads,
    fmt_num,
    gap_percent,
    grouped_bars,
    load_key,
    ordered,
)
from saaslab.results import ALL_TENANTS

PATTERN = "idempotency"
QUESTION = ("How often does each idempotency design charge a payment twice, or charge it without recording it, "
            "when clients time out and retry, the provider times out after charging and workers crash between "
            "recovery points, across load levels, and what does the protection cost?")
DESIGN_ORDER = ("none", "redis", "postgres")
UNSAFE = "none"
"""The deliberately unsafe design: the one the checker must be seen to catch."""
CHECKS = ("exactly_one_effect", "replays_match_first", "no_orphan_charges")
MIN_SEEDS = 5
AGREEMENT_PCT = 25.0
"""A measured rate within this many percent of the simulated mean (or inside its 95% CI) agrees."""
NO_LIVE = "no live run yet"
AS_LIVE = "aslive_"
"""Prefix of the simulation's rows replaying the live plan (scenarios.idempotency.as_live, `LIVE_PLAN`)."""
OWN_WORKLOAD = " *"
"""Marks a simulated cell of the table taken from the simulation's own workload: it has no replay of the live
plan at that load point."""
MISSING = Summary(mean=float("nan"), ci95=float("nan"), n=0)
_BRACKETED = re.compile(r"^(?P<check>[^\[\]]+)\[(?P<design>[^\[\]]+)\]$")


def _order(designs: Iterable[str]) -> list[str]:
    return ordered(designs, DESIGN_ORDER)


def _per_10k(s: Summary) -> str:
    return f"{fmt_num(s.mean)} per 10,000"


# --- one source, indexed ------------------------------------------------------------------------

@dataclass
class View:
    """One source's run-level rows, indexed by (design, load point, metric) -> {seed: value}."""

    run: RunData
    values: dict[tuple[str, float, str], dict[int, float]]
    designs: list[str]
    load_points: list[float]

    @classmethod
    def of(cls, run: RunData, prefix: str = "") -> View:
        """The rows whose metric starts with `prefix`, under the rest of the name; without a prefix, the rows
        of the simulation's own experiment (not its replay of the live plan, `aslive_*`)."""
        values: dict[tuple[str, float, str], dict[int, float]] = defaultdict(dict)
        for r in run.rows:
            if r.tenant != ALL_TENANTS or (r.metric.startswith(AS_LIVE) if not prefix else
                                           not r.metric.startswith(prefix)):
                continue
            values[(r.design, load_key(r.load_point), r.metric.removeprefix(prefix))][r.seed] = r.value
        return cls(run=run, values=dict(values), designs=_order(k[0] for k in values),
                   load_points=sorted({k[1] for k in values}))

    def seeds(self, design: str, lp: float, metric: str) -> dict[int, float]:
        return self.values.get((design, load_key(lp), metric), {})

    def get(self, design: str, lp: float, metric: str) -> Summary:
        found = self.seeds(design, lp, metric)
        return Summary.of(found.values()) if found else MISSING

    def has(self, design: str, lp: float) -> bool:
        return any(k[0] == design and k[1] == load_key(lp) for k in self.values)

    def has_metric(self, metric: str) -> bool:
        return any(k[2] == metric for k in self.values)

    def runs(self, design: str, metric: str) -> list[tuple[float, float]]:
        """(load point, value) of every run of `design` that has `metric`."""
        return [(lp, v) for lp in self.load_points for v in self.seeds(design, lp, metric).values()]

    def held(self, design: str, check: str) -> tuple[int, int]:
        """(runs where the check held, runs that recorded it)."""
        runs = self.runs(design, check)
        return sum(1 for _, v in runs if v >= 0.5), len(runs)

    @property
    def max_seeds(self) -> int:
        return max((len(v) for v in self.values.values()), default=0)

    @property
    def overload(self) -> list[float]:
        return [lp for lp in self.load_points if lp > 1.0]

    @property
    def within_capacity(self) -> list[float]:
        return [lp for lp in self.load_points if lp <= 1.0]

    @property
    def reference_load(self) -> float:
        """The load the cost comparison quotes: the highest within capacity (else the lowest)."""
        return (self.within_capacity or self.load_points)[-1]


# --- conclusions ----------------------------------------------------------------------------------

def _zero_everywhere(v: View, design: str, metric: str) -> bool | None:
    """True if every run of `design` recorded 0 for `metric`; None if none recorded it."""
    runs = v.runs(design, metric)
    return None if not runs else all(x == 0 for _, x in runs)


def _worst(v: View, design: str, metric: str) -> tuple[float, float] | None:
    """(highest mean over seeds, its load point) of `metric` for `design`."""
    found = [(s.mean, lp) for lp in v.load_points if (s := v.get(design, lp, metric)).known]
    return max(found) if found else None


def _headline(v: View) -> str:
    dup = {d: _zero_everywhere(v, d, "duplicates_per_10k") for d in v.designs}
    unsafe = [d for d, z in dup.items() if z is False]
    safe = [d for d, z in dup.items() if z is True]
    if not unsafe and not safe:
        return "The simulated rows hold no duplicates_per_10k, so the question stays open."
    parts = []
    for d in unsafe:
        low = [s for lp in v.within_capacity if (s := v.get(d, lp, "duplicates_per_10k")).known]
        text = f"{d} made"
        if low:
            lo, hi = min(s.mean for s in low), max(s.mean for s in low)
            span = fmt_num(lo) if fmt_num(lo) == fmt_num(hi) else f"{fmt_num(lo)} to {fmt_num(hi)}"
            text += f" {span} duplicate effects per 10,000 payments within capacity ({fmt_loads(v.within_capacity)})"
        over = [(lp, s) for lp in v.overload if (s := v.get(d, lp, "duplicates_per_10k")).known]
        if over:
            text += (" and " if low else " duplicate effects per 10,000 payments: ") + fmt_list(
                [f"{fmt_num(s.mean)} at load {fmt_load(lp)}" for lp, s in over])
        parts.append(text)
    if safe:
        runs = sum(len(v.runs(d, "duplicates_per_10k")) for d in safe)
        parts.append(f"{fmt_list(safe)} made no duplicate in any of {'its' if len(safe) == 1 else 'their'} "
                     f"{runs} runs")
    orphans = [(d, w) for d in safe if _zero_everywhere(v, d, "orphans_per_10k") is False
               and (w := _worst(v, d, "orphans_per_10k")) is not None]
    clean = [d for d in safe if _zero_everywhere(v, d, "orphans_per_10k") is True]
    if orphans:
        parts.append("but " + fmt_list([f"{d} left up to {fmt_num(w[0])} charges per 10,000 without a payment row "
                                        f"(load {fmt_load(w[1])})" for d, w in orphans])
                     + (f" where {fmt_list(clean)} left none" if clean else ""))
    text = "; ".join(parts)
    return f"Under client timeouts, retries, provider faults and crashes, {text}."


def _checker_sentence(v: View) -> str | None:
    out = []
    for d in v.designs:
        verdicts = {c: v.held(d, c) for c in CHECKS}
        failed = [(c, ok, n) for c, (ok, n) in verdicts.items() if n and ok < n]
        if not any(n for _, n in verdicts.values()):
            continue
        if not failed:
            out.append(f"every check held on all {max(n for _, n in verdicts.values())} of {d}'s runs")
        else:
            out.append(f"on {d}'s runs " + fmt_list([f"{c} failed {n - ok} of {n}" for c, ok, n in failed]))
    if not out:
        return None
    sentence = "The checker (invariants.check on each run's history and final ledger): " + "; ".join(out) + "."
    if UNSAFE in v.designs:
        ok, n = v.held(UNSAFE, "exactly_one_effect")
        if n and ok == 0:
            sentence += f" It catches the unsafe {UNSAFE} design in every run."
        elif n and ok == n:
            sentence += f" It never caught {UNSAFE}: the faults were too mild to make a duplicate."
    return sentence


def _orphan_sentence(v: View) -> str | None:
    out = []
    for d in v.designs:
        if d == UNSAFE:
            continue
        zero = _zero_everywhere(v, d, "orphans_per_10k")
        completer = [s.mean for lp in v.load_points if (s := v.get(d, lp, "completed_by_completer_per_10k")).known]
        finished = max(completer, default=0.0)
        if zero is False:
            ok, n = v.held(d, "no_orphan_charges")
            w = _worst(v, d, "orphans_per_10k")
            text = (f"{d} left charges without a payment row in {n - ok} of {n} runs (at most {fmt_num(w[0])} per "
                    f"10,000 on average, at load {fmt_load(w[1])})" if w else f"{d} left charges without a payment row")
            if finished == 0:
                text += (": nothing resumes its abandoned claims, so a charge made before a crash or a lost provider "
                         "answer gets its payment row only if the client retries after the lock has run out")
            out.append(text)
        elif zero is True and finished > 0:
            out.append(f"{d} left none: its completer finished up to {fmt_num(finished)} abandoned claims per 10,000 "
                       "payments, whether or not their clients came back")
        elif zero is True:
            out.append(f"{d} left none")
    return ("After the run (and the completer): " + "; ".join(out) + ".") if out else None


def _load_sentence(v: View) -> str | None:
    if UNSAFE not in v.designs or len(v.load_points) < 2:
        return None
    top = v.load_points[-1]
    dup, to = v.get(UNSAFE, top, "duplicates_per_10k"), v.get(UNSAFE, top, "timeouts_pct")
    retries = v.get(UNSAFE, top, "retries_per_request")
    base = [s.mean for lp in v.within_capacity if (s := v.get(UNSAFE, lp, "duplicates_per_10k")).known]
    if not (dup.known and base):
        return None
    factor = dup.mean / max(base) if max(base) > 0 else float("inf")
    past = bool(v.within_capacity) and top not in v.within_capacity
    if past and factor < 2:
        return (f"Past capacity (load {fmt_load(top)}) {UNSAFE}'s duplicates stayed near their level within capacity "
                f"({_per_10k(dup)}, {fmt_num(factor)}x the most seen there): {fmt_num(to.mean)}% of its attempts "
                f"timed out and clients retried {fmt_num(retries.mean)} times per payment.")
    text = (f"Load matters once clients time out: at load {fmt_load(top)}, {fmt_num(to.mean)}% of {UNSAFE}'s attempts "
            f"timed out, clients retried {fmt_num(retries.mean)} times per payment and duplicates reached "
            f"{_per_10k(dup)}")
    if past and math.isfinite(factor):
        text += f", {fmt_num(factor)}x the most seen within capacity"
    return text + "; an abandoned attempt still runs on the server, and each retry charges again."


def _cost_sentence(v: View) -> str | None:
    lp = v.reference_load
    items = [(d, v.get(d, lp, "latency_p99"), v.get(d, lp, "conflicts_pct"), v.get(d, lp, "retries_per_request"))
             for d in v.designs]
    items = [i for i in items if i[1].known]
    if len(items) < 2:
        return None
    parts = [f"{d} {p99.text(' ms')}" for d, p99, _, _ in items]
    text = f"At load {fmt_load(lp)} the p99 of an answered attempt was " + ", ".join(parts)
    guarded = [(d, c) for d, _, c, _ in items if d != UNSAFE and c.known]
    if guarded:
        text += ("; 409 (the first request still in flight) answered " + fmt_list(
            [f"{fmt_num(c.mean)}% of {d}'s attempts" for d, c in guarded]))
    retried = [(d, r) for d, _, _, r in items if r.known]
    if retried:
        text += "; clients retried " + ", ".join(f"{fmt_num(r.mean)} ({d})" for d, r in retried) + " times per payment"
    return text + "."


def _replay_sentence(v: View) -> str | None:
    runs = [(d, x) for d in v.designs for _, x in v.runs(d, "replay_mismatch")]
    if not runs:
        return None
    bad = sum(x for _, x in runs)
    replays = [s.mean for d in v.designs for lp in v.load_points if (s := v.get(d, lp, "replays_pct")).known]
    if bad == 0:
        return (f"Every replay matched the key's first answer byte for byte ({len(runs)} runs"
                + (f"; up to {fmt_num(max(replays))}% of attempts were replays" if replays else "") + ").")
    worst = fmt_list(sorted({d for d, x in runs if x > 0}))
    return f"{fmt_num(bad, 0)} replays differed from their key's first answer ({worst}): replays_match_first failed."


# --- simulated versus measured ---------------------------------------------------------------------

COMPARED = (("duplicates_per_10k", "duplicates per 10k"), ("orphans_per_10k", "orphans per 10k"),
            ("latency_p99", "p99 (ms)"))


@dataclass
class Comparison:
    design: str
    load_point: float
    simulated: bool
    measured: bool
    sim: dict[str, Summary]
    live: dict[str, Summary]
    as_live: bool = False
    """The simulated side is the model replaying the live plan (`aslive_*` metrics)."""

    def agrees(self, metric: str) -> bool | None:
        s, m = self.sim.get(metric, MISSING), self.live.get(metric, MISSING)
        if not (s.known and m.known):
            return None
        if s.mean == m.mean == 0:
            return True
        if not math.isnan(s.ci95) and s.low <= m.mean <= s.high:
            return True
        gap = gap_percent(s.mean, m.mean)
        return not math.isnan(gap) and abs(gap) <= AGREEMENT_PCT


def _comparisons(sim: View | None, aslive: View | None, live: View | None) -> list[Comparison]:
    """One comparison per cell the live run measured (without one, per simulated cell). The simulated side is
    the replay of the live plan (`aslive`) where the simulation has it at that cell, else its own workload."""
    if live is not None:
        cells = [(d, lp) for d in live.designs for lp in live.load_points if live.has(d, lp)]
    else:
        views = [v for v in (aslive, sim) if v is not None]
        cells = list(dict.fromkeys((d, lp) for d in _order(d for v in views for d in v.designs)
                                   for lp in sorted({lp for v in views for lp in v.load_points})
                                   if any(v.has(d, lp) for v in views)))
    out = []
    for d, lp in cells:
        replayed = aslive is not None and aslive.has(d, lp)
        source = aslive if replayed else sim
        simulated = source is not None and source.has(d, lp)
        out.append(Comparison(d, lp, simulated, live is not None,
                              {m: source.get(d, lp, m) for m, _ in COMPARED} if simulated and source else {},
                              {m: live.get(d, lp, m) for m, _ in COMPARED} if live else {}, replayed))
    return out


def _gap(c: Comparison, metric: str) -> str:
    s, m = c.sim.get(metric, MISSING), c.live.get(metric, MISSING)
    if not (s.known and m.known):
        return "n/a"
    if s.mean == 0:
        return "±0% (both 0)" if m.mean == 0 else f"n/a (sim 0; {fmt_num(m.mean)} measured)"
    return fmt_gap(gap_percent(s.mean, m.mean))


def _sim_vs_live_table(comps: list[Comparison], sim_present: bool) -> Table:
    rows = []
    replayed = any(c.as_live for c in comps)
    own = [c for c in comps if c.simulated and not c.as_live]
    for c in comps:
        row = [c.design, fmt_load(c.load_point)]
        for metric, _ in COMPARED:
            if c.simulated:
                sim_cell = c.sim[metric].text() + (OWN_WORKLOAD if replayed and not c.as_live else "")
            else:
                sim_cell = "not simulated" if sim_present else "no simulation"
            row += [sim_cell, c.live[metric].text() if c.measured else NO_LIVE,
                    _gap(c, metric) if c.measured else "n/a"]
        rows.append(row)
    columns = ["design", "load"]
    for _, label in COMPARED:
        columns += [f"{label} simulated", f"{label} measured", "gap"]
    if replayed:
        simulated = ("The simulated column replays the live load test's plan in the model "
                     "(`scenarios.idempotency.LIVE_PLAN`, as the workload section spells it out: the same clients, "
                     "fault phases, crashes, reconcile pass and service), mean ± 95% CI over seeds"
                     + (f"; cells marked{OWN_WORKLOAD} come from the simulation's own, milder workload (it did not "
                        "replay the live plan at that load)" if own else "") + ". ")
    else:
        simulated = ("Simulated: the simulation's own workload (it has no replay of the live plan: re-run "
                     f"`saaslab sim {PATTERN}`), mean ± 95% CI over seeds. ")
    return Table("Simulated versus measured: duplicates per 10,000 payments by design", columns, rows,
                 caption=("Duplicates: extra charges or payment rows per 10,000 logical payments; orphans: charges "
                          "without their payment row after the completer, per 10,000; p99: per answered attempt. "
                          + simulated + "A live run has one value per cell. gap = (measured − simulated) / simulated."))


def _agreement_sentences(comps: list[Comparison]) -> list[str]:
    out = []
    dup = [c for c in comps if c.agrees("duplicates_per_10k") is not None]
    if not dup:
        return ["The live run shares no (design, load point) with a simulated duplicate rate, so the two cannot be "
                "compared."]
    agree = [c for c in dup if c.agrees("duplicates_per_10k")]
    whom = "the simulation's replay of the live plan" if all(c.as_live for c in dup) else "the simulation"
    out.append(f"{len(agree)} of {len(dup)} measured duplicate rates agree with {whom} (inside its 95% CI, "
               f"within {AGREEMENT_PCT:g}%, or both zero).")
    surprising = [c for c in dup if c.sim["duplicates_per_10k"].mean == 0 < c.live["duplicates_per_10k"].mean]
    if surprising:
        out.append("Measured duplicates where the simulation had none: " + "; ".join(
            f"{c.design} at load {fmt_load(c.load_point)} {_per_10k(c.live['duplicates_per_10k'])}" for c in surprising)
                   + ". The service does something the model does not: look at the live history.")
    safe = sorted({c.design for c in dup if c.sim["duplicates_per_10k"].mean == 0 == c.live["duplicates_per_10k"].mean})
    if safe:
        out.append(f"{fmt_list(safe)} made no duplicate live either.")
    p99 = [(c, c.sim["latency_p99"], c.live["latency_p99"]) for c in comps if c.simulated and c.measured
           and c.sim["latency_p99"].known and c.live["latency_p99"].known]
    if p99:
        c, s, m = max(p99, key=lambda x: abs(gap_percent(x[1].mean, x[2].mean)))
        out.append(f"The p99s differ most for {c.design} at load {fmt_load(c.load_point)}: simulated "
                   f"{fmt_num(s.mean)} ms, measured {fmt_num(m.mean)} ms ({fmt_gap(gap_percent(s.mean, m.mean))}).")
    return out


# --- invariants -----------------------------------------------------------------------------------

def _live_checks(live: RunData | None) -> list[tuple[str, str, CheckResult]]:
    """(design, check name, result) for each live result; a plain name stands for every design."""
    if live is None or not live.checks:
        return []
    designs = _order(r.design for r in live.rows) or ["*"]
    out = []
    for c in live.checks:
        m = _BRACKETED.match(c.name)
        if m:
            out.append((m["design"], m["check"], c))
        else:
            out += [(d, c.name, c) for d in designs]
    return out


def _invariants(sim: View | None, live: RunData | None) -> tuple[Table | None, str]:
    rows = []
    if sim is not None:
        for d in sim.designs:
            for check in CHECKS:
                ok, n = sim.held(d, check)
                if not n:
                    continue
                if check == "replays_match_first":
                    bad = sum(x for _, x in sim.runs(d, "replay_mismatch"))
                    detail = f"{fmt_num(bad, 0)} mismatched replays in all"
                else:
                    metric = "effect_violations_per_10k" if check == "exactly_one_effect" else "orphans_per_10k"
                    what = "violating keys" if check == "exactly_one_effect" else "orphan charges"
                    w = _worst(sim, d, metric)
                    detail = (f"no {what}" if w is None or w[0] == 0 else
                              f"{what} per 10,000 payments: up to {fmt_num(w[0])} (load {fmt_load(w[1])})")
                rows.append(["simulated", d, check, f"{ok}/{n} runs", str(n - ok), detail])
    for d, name, c in _live_checks(live):
        rows.append(["live", d, name, "yes" if c.valid else "NO", f"{c.violations:,}", c.detail])
    if live is None:
        note = (f"No live run, so no live invariant results: `saaslab load {PATTERN}` runs the checks on the live "
                "history and writes live/check.json.")
    elif live.checks is None:
        note = f"The live run in {live.directory} has no check.json: re-run `saaslab load {PATTERN}`, which writes it."
    else:
        note = ""
    if not rows:
        return None, note or "No invariant results were recorded."
    caption = ("Simulated: in how many runs (loads x seeds) the check held on the run's history and final ledger, "
               "and how many failed. Live: the verdict on the live history and the state read back after the "
               "completer.")
    return Table("Invariant checks", ["source", "design", "check", "held", "violations", "detail"], rows,
                 caption=caption), note


# --- tables and figures -----------------------------------------------------------------------------

def _effects_table(v: View) -> Table:
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


def _cost_table(v: View) -> Table:
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


def _effects_figure(v: View) -> Figure:
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


def _cost_figure(v: View) -> Figure:
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


def _live_figure(comps: list[Comparison]) -> Figure:
    fig = MplFigure(figsize=(8, 3.8), layout="constrained")
    ax = fig.add_subplot()
    shown = [c for c in comps if c.measured and c.live["duplicates_per_10k"].known]
    groups = [f"{c.design}\n{fmt_load(c.load_point)}" for c in shown]
    grouped_bars(ax, groups, {"simulated": [c.sim.get("duplicates_per_10k", MISSING) for c in shown],
                              "measured": [c.live["duplicates_per_10k"] for c in shown]})
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("duplicates per 10,000 payments")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return Figure("Duplicates, simulated and measured", figure_data_uri(fig),
                  "Per design and load point the live run measured; simulated bars carry the 95% CI over seeds.")


# --- text about the setup ---------------------------------------------------------------------------

DESIGN_TEXT = {
    "none": ("The deliberately unsafe baseline: every attempt executes with a fresh provider token, so a retried or "
             "double-clicked payment charges again. It exists so the checker can be shown to catch duplicates."),
    "redis": ("An atomic claim of the key plus the stored response in one Redis hash (claim.lua, the twin of "
              "core.decide); the payment charges with the claim's token, writes the payment row, stores the "
              "response. Nothing durable marks the steps in between, and there is no completer."),
    "postgres": ("brandur's atomic phases started → charge_created → finished, each one transaction, with the "
                 "request's parameters stored with the claim; a completer resumes claims abandoned past the lock "
                 "timeout with the same provider token."),
}


def _setup_lines(params: dict[str, Any]) -> list[str]:
    """The simulated workload, faults and clients, from run.json's `setup` (KeyError if one is missing)."""
    p = params["setup"]
    loads = ", ".join(fmt_g(x) for x in params.get("load_points", []))
    lines = [
        f"Payments: Poisson arrivals at {loads} x capacity ({fmt_g(p['capacity_rps'])} payments/s: {p['workers']} "
        f"workers x {p['slots']} slots, a handler of {fmt_g(p['handler_ms'])} ms + {fmt_g(p['handler_overhead_ms'])} ms "
        f"mean overhead, a provider call of {fmt_g(p['provider_ms'])} ms + {fmt_g(p['provider_jitter_ms'])} ms mean "
        f"jitter) for {fmt_g(p['duration_s'])} s; {fmt_g(100 * p['p_double_click'])}% are double-clicked within "
        f"{fmt_g(p['double_click_ms'])} ms.",
        f"Clients: {fmt_g(p['client_timeout_ms'])} ms timeout per attempt; {p['retry_policy']} backoff (base "
        f"{fmt_g(p['retry_base_ms'])} ms, cap {fmt_g(p['retry_cap_ms'])} ms), at most {p['max_attempts']} attempts, "
        "Retry-After honoured (reference_impl/retries/core.py).",
        f"Provider faults per call: slow {fmt_g(100 * p['p_slow'])}% (+{fmt_g(p['slow_ms'])} ms), declined "
        f"{fmt_g(100 * p['p_fail'])}%, timeout after the charge {fmt_g(100 * p['p_timeout_after_effect'])}% (the service "
        "answers 504 with Retry-After: 1).",
        f"Crashes: the worker process dies with probability {fmt_g(100 * p['p_crash'])}% at each of "
        f"{fmt_list(list(p['crash_points']))}, dropping every attempt on it, and restarts after "
        f"{fmt_g(p['restart_ms'])} ms.",
        f"Claims lock for {fmt_g(p['lock_timeout_s'])} s (shorter than the service's 90 s default, so recoveries happen "
        f"within a run); the postgres completer passes every {fmt_g(p['completer_interval_s'])} s, and a run ends once "
        "it has finished every claim.",
    ]
    seeds = len(params.get("seeds") or [])
    if seeds:
        lines.append(f"{seeds} seeds per design and load point{' (quick durations)' if params.get('quick') else ''}.")
    return lines


def _as_live_line(params: dict[str, Any]) -> str:
    """The simulation's replay of the live plan, from run.json's `as_live` (KeyError if a field is missing)."""
    a = params["as_live"]
    p, loads = a["setup"], ", ".join(fmt_g(x) for x in a["load_points"])
    lo, hi = (fmt_g(100 * x) for x in p["slow_phase"])
    crashes = fmt_list([f"{point} ({fmt_g(100 * at)}%)" for at, point in p["crash_at"]])
    budget = p["retry_budget"]
    clicks = " or ".join(str(n) for n in p["clicks"])
    text = (f"The live plan, replayed in the model (`aslive_*` rows): loads {loads} x "
            f"{fmt_g(p['measured_capacity_rps'])} payments/s (the capacity with nothing armed) for "
            f"{fmt_g(p['duration_s'])} s, {len(a.get('seeds') or [])} seeds, on {p['workers']} workers x {p['slots']} "
            f"slots with a {fmt_g(p['lock_timeout_s'])} s lock; {fmt_g(100 * p['p_double_click'])}% of payments "
            f"clicked by {clicks} clients within {fmt_g(p['double_click_ms'])} ms; at most {p['max_attempts']} attempts "
            f"and a shared retry budget ({budget[0]}% of successes + {budget[1]}/s, burst {budget[2]}); the provider "
            f"slow ({fmt_g(100 * p['p_slow'])}%, +{fmt_g(p['slow_ms'])} ms) from {lo}% to {hi}% of the run, else "
            f"{fmt_g(100 * p['p_timeout_after_effect'])}% timing out after the charge; one-shot crashes at {crashes}")
    if p.get("reconcile_after_s") is not None:
        text += (f"; {fmt_g(p['reconcile_after_s'])} s after the last client, one more client for each payment whose "
                 "clients all gave up")
    return text + "."


def _workload(sim: RunData | None, live: RunData | None) -> list[str]:
    lines = []
    if sim is not None and sim.parameters.get("setup"):
        try:
            lines += _setup_lines(sim.parameters)
        except (KeyError, TypeError, ValueError):
            lines.append(f"The simulated run's setup in run.json is incomplete (an older version?): re-run "
                         f"`saaslab sim {PATTERN}`.")
    if sim is not None and sim.parameters.get("as_live"):
        try:
            lines.append(_as_live_line(sim.parameters))
        except (KeyError, TypeError, ValueError):
            lines.append(f"The simulated run's replay of the live plan in run.json is incomplete (an older version?): "
                         f"re-run `saaslab sim {PATTERN}`.")
    if live is not None:
        lp = live.parameters
        parts = [f"{k.replace('_', ' ')} {lp[k]}" for k in ("load_points", "duration_s", "rate", "workers", "seed",
                                                            "designs") if lp.get(k) is not None]
        lines.append("Live run: " + ("; ".join(parts) if parts else "no parameters recorded") + ".")
    if not lines:
        lines.append("The runs recorded no workload parameters (run.json is missing or has none).")
    return lines


def _live_notes(sim: View | None, aslive: View | None, live: View) -> list[str]:
    notes = []
    ran = sorted({lp for v in (sim, aslive) if v is not None for lp in v.load_points})
    if ran:
        unsimulated = [lp for lp in live.load_points if lp not in ran]
        if unsimulated:
            notes.append(f"The simulation has no {fmt_loads(unsimulated)} (it ran {fmt_loads(ran)}), so those "
                         "rows have no simulated values.")
    for d in live.designs:
        for lp in live.load_points:
            problems = [f"{s.mean:,.0f} {noun}" for metric, noun in (("errors", "errors"), ("timeouts", "timeouts"),
                                                                     ("dropped", "dropped arrivals"))
                        if (s := live.get(d, lp, metric)).known and s.mean > 0]
            if problems:
                notes.append(f"Live {d} at load {fmt_load(lp)} saw {fmt_list(problems)}.")
    return notes


# --- the builder ------------------------------------------------------------------------------------

def build(data: PatternData) -> Report:
    sim = View.of(data.sim) if data.sim and data.sim.rows else None
    sim = sim if sim is not None and sim.values else None
    aslive = View.of(data.sim, AS_LIVE) if data.sim and data.sim.rows else None
    aslive = aslive if aslive is not None and aslive.values else None
    live = View.of(data.live) if data.live and data.live.rows else None
    notes: list[str] = []
    conclusions: list[str] = []
    tables: list[Table] = []
    figures: list[Figure] = []

    if sim is None:
        conclusions.append(f"There is no simulation, so there are no confidence intervals across loads and the "
                           f"measured values stand alone: run `saaslab sim {PATTERN}`.")
        designs = live.designs if live else []
    else:
        designs = sim.designs
        if sim.max_seeds < MIN_SEEDS:
            notes.append(f"The simulation used {sim.max_seeds} seed(s); conclusions need at least {MIN_SEEDS} "
                         f"(`saaslab sim {PATTERN} --seeds {MIN_SEEDS}`), so the intervals are wide or missing.")
        conclusions.append(_headline(sim))
        sentences = (_checker_sentence(sim), _orphan_sentence(sim), _load_sentence(sim), _cost_sentence(sim),
                     _replay_sentence(sim))
        conclusions += [s for s in sentences if s]
        tables = [_effects_table(sim), _cost_table(sim)]
        figures = [_effects_figure(sim), _cost_figure(sim)]

    comps = _comparisons(sim, aslive, live) if (sim or aslive or live) else []
    sim_vs_live = _sim_vs_live_table(comps, sim is not None or aslive is not None) if comps else None
    if live is None:
        sim_vs_live_note = (f"No live run yet: run `saaslab load {PATTERN}`, then `saaslab report {PATTERN}`; the "
                            "measured columns fill in from its rows.")
        conclusions.append(sim_vs_live_note)
    else:
        notes += _live_notes(sim, aslive, live)
        sim_vs_live_note = ("One row per design and load point the live run measured. A live run has one value per "
                            "cell, so its values carry no interval.")
        if sim is not None:
            conclusions += _agreement_sentences(comps)
            figures.append(_live_figure(comps))
    live_checks = checks_sentence(data.live)
    if live_checks:
        conclusions.append(live_checks)
    invariants, invariants_note = _invariants(sim, data.live)

    return Report(pattern=PATTERN, question=QUESTION,
                  designs={d: DESIGN_TEXT.get(d, "(no description)") for d in designs},
                  workload=_workload(data.sim, data.live), conclusions=conclusions, tables=tables, figures=figures,
                  invariants=invariants, invariants_note=invariants_note, sim_vs_live=sim_vs_live,
                  sim_vs_live_note=sim_vs_live_note, notes=notes)
