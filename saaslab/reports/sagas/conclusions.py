"""The sagas report's conclusions from the simulation: sentences filled in from the numbers."""

from __future__ import annotations

from saaslab.report import fmt_list, fmt_load, fmt_num
from saaslab.reports.sagas.view import SAFE, UNSAFE, View, seconds


def headline(v: View) -> str | None:
    """Which designs kept every order all-done or all-undone, and how badly the unsafe one did not."""
    safe = [d for d in v.designs if d in SAFE]
    held = {d: v.held(d, "checks_valid") for d in v.designs}
    clean = [d for d in safe if held[d][1] and held[d][0] == held[d][1]]
    broken = [d for d in safe if held[d][1] and held[d][0] < held[d][1]]
    parts = []
    if clean:
        runs = sum(held[d][1] for d in clean)
        parts.append(f"{fmt_list(clean)} ended every order all-done or all-undone in all {runs} simulated runs "
                     "(every invariant held)")
    if broken:
        parts.append(fmt_list([f"{d} failed a check in {held[d][1] - held[d][0]} of {held[d][1]} runs"
                               for d in broken]))
    if UNSAFE in v.designs:
        lp = v.reference_load
        calm, stormy = v.at(UNSAFE, lp, "anomalies_per_10k", v.calm), v.at(UNSAFE, lp, "anomalies_per_10k", v.stormy)
        if calm.known and stormy.known:
            parts.append(f"the unsafe dual writes left {fmt_num(calm.mean)} anomalous orders per 10,000 with "
                         f"{v.calm.label} and {fmt_num(stormy.mean)} with {v.stormy.label} (load {fmt_load(lp)})")
    if not parts:
        return None
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def checker_sentence(v: View) -> str | None:
    if UNSAFE not in v.designs:
        return None
    ok, n = v.held(UNSAFE, "all_or_nothing")
    terminal_ok, terminal_n = v.held(UNSAFE, "terminal")
    if not n:
        return None
    text = (f"The checker (invariants.check on each run's history and final state) caught {UNSAFE} in {n - ok} of "
            f"{n} runs with all_or_nothing")
    if terminal_n and terminal_ok < terminal_n:
        text += f" and in {terminal_n - terminal_ok} with terminal (a crash left its orders pending for good)"
    return text + "."


def cost_sentence(v: View) -> str | None:
    lp, c = v.reference_load, v.calm
    found = [(d, v.at(d, lp, "latency_p50", c), v.at(d, lp, "messages_per_saga", c)) for d in v.designs if d in SAFE]
    found = [x for x in found if x[1].known]
    if len(found) < 2:
        return None
    text = (f"With {c.label} at load {fmt_load(lp)}, an order took a median of "
            + fmt_list([f"{fmt_num(p50.mean)} ms and {fmt_num(m.mean)} messages ({d})" for d, p50, m in found])
            + ": choreography pays a relay poll and a stream hop per step, two-phase commit the fewest round trips.")
    top = v.load_points[-1]
    done = [(d, s) for d in v.designs if d in SAFE and (s := v.at(d, top, "throughput", c)).known]
    if len(done) >= 2:
        (slow, least), (_, most) = min(done, key=lambda x: x[1].mean), max(done, key=lambda x: x[1].mean)
        if least.mean < 0.9 * most.mean:
            why = (": its orders queue for the hottest stock rows, locked across the whole protocol" if slow == "twopc"
                   else "")
            text += (f" At load {fmt_load(top)} {slow} completed {fmt_num(least.mean)} orders/s against up to "
                     f"{fmt_num(most.mean)}{why}.")
    return text


def lock_sentence(v: View) -> str | None:
    if "twopc" not in v.designs:
        return None
    lp, c = v.reference_load, v.calm
    twopc = v.at("twopc", lp, "lock_hold_p99", c)
    sagas = [(d, s) for d in v.designs if d in SAFE and d != "twopc" and (s := v.at(d, lp, "lock_hold_p99", c)).known]
    if not (twopc.known and sagas):
        return None
    worst = max(s.mean for _, s in sagas)
    text = (f"Two-phase commit held stock rows locked for a p99 of {fmt_num(twopc.mean)} ms against at most "
            f"{fmt_num(worst)} ms for the sagas ({fmt_num(twopc.mean / worst)}x): its locks last from the "
            "reservation through the charge to COMMIT PREPARED")
    failing = v.failing
    if failing is not None:
        p50 = v.at("twopc", lp, "latency_p50", failing)
        others = [v.at(d, lp, "latency_p50", failing) for d, _ in sagas]
        if p50.known and all(o.known for o in others):
            text += (f"; with {failing.label} its median order took {fmt_num(p50.mean)} ms (sagas: at most "
                     f"{fmt_num(max(o.mean for o in others))} ms), because a PREPARE whose answer is lost keeps hot "
                     "rows locked until the step times out")
    return text + "."


def recovery_sentence(v: View) -> str | None:
    if not v.crashing:
        return None
    lp = v.reference_load
    parts = []
    for d in v.designs:
        found = [s for c in v.crashing if (s := v.at(d, lp, "time_to_consistency", c)).known]
        if found:
            parts.append(f"{d} {seconds(max(found, key=lambda s: s.mean))}")
        elif d == UNSAFE:
            parts.append(f"{d} never (nothing resumes its orders)")
    if not parts:
        return None
    return ("After a crash, the orders it caught were all finished within (mean, worst condition) "
            + ", ".join(parts) + ": twopc recovers in-doubt transactions as soon as the coordinator is back, "
            "orchestration waits for the saga's lease to run out, choreography for the visibility timeout.")


def doubt_sentence(v: View) -> str | None:
    if "twopc" not in v.designs or not v.crashing:
        return None
    lp = v.reference_load
    found = [(c, s) for c in v.crashing if (s := v.at("twopc", lp, "in_doubt_max", c)).known]
    if not found:
        return None
    c, s = max(found, key=lambda x: x[1].mean)
    return (f"A prepared transaction stayed in doubt, its rows locked, for up to {fmt_num(s.mean)} ms on average per "
            f"run ({c.label}): through the coordinator's restart.")
