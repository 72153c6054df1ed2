"""Simulated against measured, as every pattern report with a live face judges it: a measured value agrees with
the simulation when it falls inside the simulated 95% CI, or within `AGREEMENT_PCT` of the simulated mean.

A pattern's comparison cells (which design, load, condition or cell) are its own; what they share is the
`Compared` protocol: the two summaries and whether they agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from saaslab.report.numbers import Summary, fmt_list, gap_percent

AGREEMENT_PCT = 25.0
"""A measured value within this many percent of the simulated mean agrees with it."""
NEAREST = " *"
"""Marks a simulated value taken from the nearest cell or condition swept, not the live run's own."""


def agrees(sim: Summary, live: Summary, *, zeros_agree: bool = False) -> bool | None:
    """Whether `live` agrees with `sim`; None when either is unknown, or both are zero and `zeros_agree` is off
    (nothing happened on either side, which confirms no rate)."""
    if not (sim.known and live.known):
        return None
    if sim.mean == live.mean == 0:
        return True if zeros_agree else None
    if not math.isnan(sim.ci95) and sim.low <= live.mean <= sim.high:
        return True
    gap = gap_percent(sim.mean, live.mean)
    return not math.isnan(gap) and abs(gap) <= AGREEMENT_PCT


def simulated_text(sim: Summary, nearest: bool, sim_present: bool) -> str:
    """The simulated cell of a comparison row: the value (marked when from the nearest cell swept), else why none."""
    if sim.known:
        return sim.text() + (NEAREST if nearest else "")
    return "not simulated" if sim_present else "no simulation"


class Compared(Protocol):
    sim: Summary
    live: Summary

    def agrees(self) -> bool | None: ...


C = TypeVar("C", bound=Compared)


def agreement_sentences(comps: Sequence[C], describe: Callable[[C], str], *, nothing_shared: str,
                        against: str = "the simulation") -> list[str]:
    """How many measured values agree with `against`, and the (at most three) largest gaps, each as `describe`
    words it; `nothing_shared` when no comparison can be judged."""
    judged = [x for x in comps if x.agrees() is not None]
    if not judged:
        return [nothing_shared]
    agree = [x for x in judged if x.agrees()]
    out = [f"{len(agree)} of {len(judged)} measured values agree with {against} (inside its 95% CI or within "
           f"{AGREEMENT_PCT:g}%)."]
    # A zero simulation has no relative gap, yet anything measured against it is the largest gap of all.
    far = sorted((x for x in judged if not x.agrees()),
                 key=lambda x: -abs(gap_percent(x.sim.mean, x.live.mean)) if x.sim.mean else -math.inf)[:3]
    if far:
        out.append("The largest gaps: " + fmt_list([describe(x) for x in far]) + ".")
    return out
