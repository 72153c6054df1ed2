"""A pattern's report as a declaration, and the one `build` that turns any declaration into a `Report`.

A declaration says what a pattern's report is made of; the engine decides how it is assembled:

- `context(data)` indexes the rows once (the pattern's views); every rule below takes that context,
  which carries the loaded `PatternData` as `.data`.
- `sections`, in report order: each has a `when` test and its conclusion rules, tables and figures.
  A rule returns a sentence, a list of them, or None when the numbers say nothing. A new experiment
  is one more `Section` in the tuple.
- `answer`: which rules' sentences open the report, at most five sentences in all; a rule may be
  given as `(rule, n)` to take its first n sentences, or its last -n when n is negative.
- `headline_figure`: the figure rule whose plot opens the report.
- `notes`, `designs`, `workload`, `sim_vs_live` and `invariants` (default: the live check.json), and
  `live_latencies`: the measured latencies the generator's send lag is set beside.

The engine adds the parts every report has: the send-lag table and sentence for a live run, the
live invariants sentence, and the answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from saaslab import patterns
from saaslab.report.content import Figure, Report, Table
from saaslab.report.data import PatternData
from saaslab.report.evidence import (
    LiveLatency,
    checks_sentence,
    checks_table,
    lag_flagged,
    send_lag_sentence,
    send_lag_table,
)

ANSWER_SENTENCES = 5


Rule = Callable[[Any], str | Sequence[str] | None]
TableRule = Callable[[Any], Table | Sequence[Table] | None]
FigureRule = Callable[[Any], Figure | None]


def always(_ctx: Any) -> bool:
    return True


# Section tests for contexts that hold a `sim` and a `live` view (None when that source is missing).
def has_sim(ctx: Any) -> bool:
    return ctx.sim is not None


def no_sim(ctx: Any) -> bool:
    return ctx.sim is None


def no_live(ctx: Any) -> bool:
    return ctx.live is None


def sim_and_live(ctx: Any) -> bool:
    return ctx.sim is not None and ctx.live is not None


V = TypeVar("V")
C = TypeVar("C")


@dataclass
class SimAndLive(Generic[V, C]):
    """A context of a simulated and a measured view of one pattern's runs (None when that source has no rows), and
    the simulated-versus-measured comparison cells; a pattern subclasses it with a classmethod `of(data)`."""

    data: PatternData
    sim: V | None
    live: V | None
    comps: list[C] = field(default_factory=list)

    @property
    def simulated(self) -> V:
        """The simulated view, for rules that run only in sections whose `when` is `has_sim`."""
        assert self.sim is not None
        return self.sim


def sim_vs_live_rule(waiting_table: Callable[[Any], Table | None], table: Callable[[list[Any], bool], Table],
                      waiting: str, note: str) -> Callable[[SimAndLive[Any, Any]], tuple[Table | None, str]]:
    """A `sim_vs_live` rule: without a live run, the simulated side (`waiting_table` of the simulated view) and the
    `waiting` sentence; with one, `table` of the comparison cells (told whether a simulation ran) and `note`."""
    def rule(ctx: SimAndLive[Any, Any]) -> tuple[Table | None, str]:
        if ctx.live is None:
            return (waiting_table(ctx.sim) if ctx.sim is not None else None), waiting
        return table(ctx.comps, ctx.sim is not None), note

    return rule


def designs_present(ctx: Any, texts: Mapping[str, str]) -> dict[str, str]:
    """The designs the simulation ran (else the live run), each with its description in `texts`."""
    present = ctx.sim.designs if ctx.sim else ctx.live.designs if ctx.live else []
    return {d: texts.get(d, "(no description)") for d in present}


def empty_without_rows(pattern: str) -> Callable[[Any], str | None]:
    """An `empty` rule for contexts with a `sim` and a `live` view: a sentence when both are missing."""
    def empty(ctx: Any) -> str | None:
        if ctx.sim is None and ctx.live is None:
            return f"The runs hold no {pattern} rows: run `saaslab sim {pattern}`."
        return None

    return empty


def on(attribute: str, rule: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`rule`, written over one view of the context (`ctx.<attribute>`), as a rule over the context."""
    def over_context(ctx: Any) -> Any:
        return rule(getattr(ctx, attribute))

    over_context.__name__ = f"{rule.__name__}_on_{attribute}"
    return over_context


def on_sim_and_live(rule: Callable[[Any, Any], Any]) -> Callable[[Any], Any]:
    """`rule`, written over the simulated and the measured view, as a rule over the context."""
    def over_context(ctx: Any) -> Any:
        return rule(ctx.sim, ctx.live)

    over_context.__name__ = f"{rule.__name__}_on_sim_and_live"
    return over_context


@dataclass(frozen=True)
class Section:
    """One part of the evidence: its conclusions, tables and figures, when `when` holds for the data."""

    name: str
    when: Callable[[Any], bool] = always
    conclusions: tuple[Rule, ...] = ()
    tables: tuple[TableRule, ...] = ()
    figures: tuple[FigureRule, ...] = ()


@dataclass(frozen=True)
class PatternReport:
    """What one pattern's report is made of (the module docstring describes each field)."""

    slug: str
    context: Callable[[PatternData], Any]
    sections: tuple[Section, ...]
    answer: tuple[Rule | tuple[Rule, int], ...]
    designs: Callable[[Any], dict[str, str]]
    workload: Callable[[Any], list[str]]
    headline_figure: FigureRule | None = None
    notes: tuple[Rule, ...] = ()
    sim_vs_live: Callable[[Any], tuple[Table | None, str]] | None = None
    invariants: Callable[[Any], tuple[Table | None, str]] | None = None
    live_latencies: Callable[[Any], Sequence[LiveLatency]] | None = None
    empty: Callable[[Any], str | None] = field(default=lambda _ctx: None)
    """A sentence when there is nothing to build a report from (the rows are empty), else None."""

    @property
    def question(self) -> str:
        return patterns.get(self.slug).question

    @property
    def simulation_only(self) -> bool:
        return not patterns.get(self.slug).has_live


def _sentences_of(found: str | Sequence[str] | None) -> list[str]:
    if found is None:
        return []
    return [found] if isinstance(found, str) else [s for s in found if s]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """A conclusion's sentences: split after a full stop followed by a space (decimals have none)."""
    return [s for s in _SENTENCE_END.split(text) if s]


def _answer(decl: PatternReport, said: dict[Rule, list[str]], lag: str | None) -> list[str]:
    out: list[str] = []
    room = ANSWER_SENTENCES - (1 if lag else 0)
    for entry in decl.answer:
        rule, limit = entry if isinstance(entry, tuple) else (entry, None)
        sentences = [s for c in said.get(rule, []) for s in split_sentences(c)]
        chosen = sentences if limit is None else sentences[limit:] if limit < 0 else sentences[:limit]
        out += [s for s in chosen if s not in out]
    out = out[:room]
    return [*out, *([lag] if lag else [])]


def build(decl: PatternReport, data: PatternData) -> Report:
    """The report `decl` declares, over `data`."""
    ctx = decl.context(data)
    invariants, invariants_note = (decl.invariants or (lambda c: checks_table(c.data.live, decl.slug)))(ctx)
    sim_vs_live, sim_vs_live_note = decl.sim_vs_live(ctx) if decl.sim_vs_live else (None, "")
    base = {"pattern": decl.slug, "question": decl.question, "workload": decl.workload(ctx),
            "simulation_only": decl.simulation_only, "invariants_note": invariants_note}
    empty = decl.empty(ctx)
    if empty is not None:
        return Report(designs={}, conclusions=[empty],
                      sim_vs_live_note=sim_vs_live_note if decl.simulation_only else "", **base)

    said: dict[Rule, list[str]] = {}
    conclusions: list[str] = []
    tables: list[Table] = []
    figures: list[Figure] = []
    headline_figure = None
    by_section: dict[str, list[str]] = {}
    for section in decl.sections:
        if not section.when(ctx):
            continue
        for rule in section.conclusions:
            said[rule] = _sentences_of(rule(ctx))
            conclusions += said[rule]
            by_section.setdefault(section.name, []).extend(said[rule])
        for table_rule in section.tables:
            made = table_rule(ctx)
            tables += [] if made is None else [made] if isinstance(made, Table) else list(made)
        for figure_rule in section.figures:
            figure = figure_rule(ctx)
            if figure is not None:
                if figure_rule is decl.headline_figure:
                    headline_figure = len(figures)
                figures.append(figure)

    lag_table, lag_answer = None, None
    live = data.live
    latencies = list(decl.live_latencies(ctx)) if decl.live_latencies and live is not None else []
    if live is not None and latencies:
        lag_table = send_lag_table(live, latencies)
        lag = send_lag_sentence(live, latencies, patterns.get(decl.slug).live)
        if lag:
            conclusions.append(lag)
            lag_answer = lag if lag_flagged(live, latencies) else None
    unsafe = patterns.get(decl.slug).unsafe
    checks = checks_sentence(live, unsafe.name if unsafe else None)
    if checks:
        said[checks_sentence] = [checks]  # type: ignore[index]
        conclusions.append(checks)

    notes = [n for rule in decl.notes for n in _sentences_of(rule(ctx))]
    return Report(designs=decl.designs(ctx), conclusions=conclusions, tables=tables, figures=figures,
                  invariants=invariants, sim_vs_live=sim_vs_live, sim_vs_live_note=sim_vs_live_note, notes=notes,
                  answer=_answer(decl, said, lag_answer), headline_figure=headline_figure, send_lag=lag_table,
                  by_section=by_section,
                  **base)
