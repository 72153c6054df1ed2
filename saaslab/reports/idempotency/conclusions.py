"""The idempotency report's conclusions from the simulation: duplicates and orphans per design, the
checker's verdicts, what load does, and what the protection costs."""

from __future__ import annotations

import math

from saaslab.report import fmt_list, fmt_load, fmt_loads, fmt_num
from saaslab.reports.idempotency.view import CHECKS, UNSAFE, View, per_10k, worst, zero_everywhere


def headline(v: View) -> str:
    dup = {d: zero_everywhere(v, d, "duplicates_per_10k") for d in v.designs}
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
    orphans = [(d, w) for d in safe if zero_everywhere(v, d, "orphans_per_10k") is False
               and (w := worst(v, d, "orphans_per_10k")) is not None]
    clean = [d for d in safe if zero_everywhere(v, d, "orphans_per_10k") is True]
    if orphans:
        parts.append("but " + fmt_list([f"{d} left up to {fmt_num(w[0])} charges per 10,000 without a payment row "
                                        f"(load {fmt_load(w[1])})" for d, w in orphans])
                     + (f" where {fmt_list(clean)} left none" if clean else ""))
    text = "; ".join(parts)
    return f"Under client timeouts, retries, provider faults and crashes, {text}."


def checker_sentence(v: View) -> str | None:
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


def orphan_sentence(v: View) -> str | None:
    out = []
    for d in v.designs:
        if d == UNSAFE:
            continue
        zero = zero_everywhere(v, d, "orphans_per_10k")
        completer = [s.mean for lp in v.load_points if (s := v.get(d, lp, "completed_by_completer_per_10k")).known]
        finished = max(completer, default=0.0)
        if zero is False:
            ok, n = v.held(d, "no_orphan_charges")
            w = worst(v, d, "orphans_per_10k")
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


def load_sentence(v: View) -> str | None:
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
                f"({per_10k(dup)}, {fmt_num(factor)}x the most seen there): {fmt_num(to.mean)}% of its attempts "
                f"timed out and clients retried {fmt_num(retries.mean)} times per payment.")
    text = (f"Load matters once clients time out: at load {fmt_load(top)}, {fmt_num(to.mean)}% of {UNSAFE}'s attempts "
            f"timed out, clients retried {fmt_num(retries.mean)} times per payment and duplicates reached "
            f"{per_10k(dup)}")
    if past and math.isfinite(factor):
        text += f", {fmt_num(factor)}x the most seen within capacity"
    return text + "; an abandoned attempt still runs on the server, and each retry charges again."


def cost_sentence(v: View) -> str | None:
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


def replay_sentence(v: View) -> str | None:
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
