"""The retries report's conclusions on the metastability map (set against Brooker, 2022), and the
headline over both experiments."""

from __future__ import annotations

from typing import Any

from saaslab.report import fmt_list, fmt_num
from saaslab.reports.retries.data import (
    GROWING,
    LITTLE,
    PLAIN_RETRIES,
    Contention,
    Map,
    calls_words,
    cells_words,
    n_of,
    secs_words,
)

# --- conclusions: metastability -----------------------------------------------------------------

def map_sentences(m: Map, recovery_s: Any, share: Any, collapsed_share: Any = None) -> list[str]:
    out = []
    deadline = f"{recovery_s:g} s" if isinstance(recovery_s, int | float) else "the recovery deadline"
    pct = f"{share * 100:.0f}%" if isinstance(share, int | float) else "the threshold"
    floor = (f" and *stayed collapsed* when less than {collapsed_share * 100:.0f}% of the requests offered in the hold "
             "window after that were served" if isinstance(collapsed_share, int | float) else "")
    out.append(f"On the metastability map ({len(m.loads)} loads x {len(m.triggers)} trigger lengths, {m.seeds} seed(s) "
               f"per cell; a cell takes the state most of its seeds reached), a system *recovered* when its goodput "
               f"share was back to at least {pct} within {deadline} of the spike's end{floor}.")
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
            out.append(f"{d} stayed collapsed in {n_of(len(col), total, 'cells')} ({cells_words(col)}), recovered in {len(rec)}"
                       + (f" and was still draining in {len(dra)}" if dra else "") + ".")
        else:
            never.append(d)
            out.append(f"{d} never stayed collapsed: it recovered in {n_of(len(rec), total, 'cells')}"
                       + (f" and was still draining its backlog in {len(dra)} ({cells_words(dra)})" if dra else "") + ".")
    plain = [d for d in PLAIN_RETRIES if d in m.designs]
    backoff_little = None
    if "no_backoff" in plain and len(plain) > 1:
        base = len(m.where("no_backoff", "collapsed"))
        backed = {d: len(m.where(d, "collapsed")) for d in plain if d != "no_backoff"}
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


def headline(c: Contention | None, m: Map | None) -> str | None:
    parts = []
    if c is not None and c.clients:
        n = c.clients[-1]
        work = c.ranking(n, "contention_calls")
        soon = c.ranking(n, "contention_completion_ms", GROWING)
        if work and soon:
            parts.append(f"Under contention ({n} clients), {work[0][0]} did the least work ({calls_words(work[0][1])}) and "
                         f"{soon[0][0]} finished soonest of the policies whose wait grows ({secs_words(soon[0][1])})")
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
