"""The retries report's data: Brooker's contention experiment and the metastability map, summarised over
seeds, and numbers as words."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from saaslab import patterns
from saaslab.report import MISSING, RunData, Summary, decimals_for, fmt_list, fmt_num, ordered, summarise
from scenarios.retries import split_trigger_metric

POLICY_ORDER = tuple(d.name for d in patterns.get("retries").designs)


JITTERED = ("equal_jitter", "full_jitter", "decorrelated_jitter")
GROWING = ("exponential", *JITTERED)
"""Policies whose wait grows with the attempt: the ones Brooker compares on time."""
META_ORDER = ("single_attempt", "no_backoff", "exponential", "full_jitter", "full_jitter+budget", "full_jitter+breaker")
PLAIN_RETRIES = ("no_backoff", "exponential", "full_jitter")
"""Designs that retry with a policy alone: no budget, no breaker."""
LITTLE = 0.25
"""Backoff 'does little' when it spares at most this share of the cells where retrying at once collapsed."""
STATES = ("recovered", "draining", "collapsed")
STATE_COLOURS = ("#5fb36a", "#f0b63c", "#d9534f")


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
            states = [state_of(by_metric, s) for s in seeds]
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


def state_of(by_metric: dict[str, dict[int, float]], seed: int) -> str | None:
    recovered = by_metric.get("meta_recovered", {}).get(seed)
    collapsed = by_metric.get("meta_collapsed", {}).get(seed)
    if recovered is None or collapsed is None:
        return None
    return "recovered" if recovered else "collapsed" if collapsed else "draining"


# --- numbers as words ---------------------------------------------------------------------------

def ci_words(s: Summary) -> str:
    return "" if math.isnan(s.ci95) else f" ± {fmt_num(s.ci95, decimals_for(s.mean))}"


def calls_words(s: Summary) -> str:
    return f"{fmt_num(s.mean)}{ci_words(s)} calls"


def secs_words(ms: Summary) -> str:
    """A completion time, summarised in ms, as seconds."""
    s = Summary(ms.mean / 1000, ms.ci95 / 1000, ms.n)
    return f"{fmt_num(s.mean)}{ci_words(s)} s"


def separated(a: Summary, b: Summary) -> bool:
    """Both have intervals and they do not overlap."""
    return not (math.isnan(a.ci95) or math.isnan(b.ci95)) and (a.high < b.low or b.high < a.low)


def client_counts(clients: list[int]) -> str:
    return fmt_list([str(n) for n in clients])


def cells_words(cells: list[tuple[float, int]]) -> str:
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


def n_of(n: int, total: int, noun: str) -> str:
    return f"{n} of {total} {noun}"
