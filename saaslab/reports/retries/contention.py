"""The retries report's conclusions on contention: who does the least work and who finishes soonest,
set against Brooker (2015)."""

from __future__ import annotations

from saaslab.report import Summary
from saaslab.reports.retries.data import (
    GROWING,
    JITTERED,
    Contention,
    calls_words,
    client_counts,
    n_of,
    secs_words,
    separated,
)

# --- conclusions: contention --------------------------------------------------------------------

def work_sentences(c: Contention) -> list[str]:
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
            statuses[n] = ("least_clear" if separated(b, s2) else "least_overlap", second, b, s2)
        else:
            statuses[n] = ("beaten" if separated(b, fj) else "tied", best, fj, b)
    if not statuses:
        return ["The contention experiment has no full_jitter rows to compare, so who does the least work stays open."]
    total = len(statuses)
    least = [n for n, st in statuses.items() if st[0].startswith("least")]
    out = [f"full_jitter made the fewest write calls at {n_of(len(least), total, 'client counts')}"
           + (f" ({client_counts(least)})" if least and len(least) < total else "") + "."]
    for n, (status, other, fj, o) in statuses.items():
        if status == "least_overlap":
            out.append(f"At {n} clients its lead over {other} ({calls_words(fj)} against {calls_words(o)}) is within the 95% CIs.")
        elif status in ("tied", "beaten"):
            how = "beyond" if status == "beaten" else "within"
            out.append(f"At {n} clients {other} made fewer ({calls_words(o)} against {calls_words(fj)}), {how} the 95% CIs.")
    beaten = [n for n, st in statuses.items() if st[0] == "beaten"]
    if len(least) == total and all(st[0] == "least_clear" for st in statuses.values()):
        verdict = "This agrees with Brooker (2015), who found that full jitter does the least work."
    elif not beaten:
        verdict = ("This agrees with Brooker (2015), who found that full jitter does the least work, within the "
                   "95% CIs: no policy did clearly less anywhere.")
    elif len(beaten) < total / 2:
        verdict = (f"This partly agrees with Brooker (2015), who found that full jitter does the least work: another "
                   f"policy did clearly less at {client_counts(beaten)} clients.")
    else:
        verdict = (f"This disagrees with Brooker (2015), who found that full jitter does the least work: another "
                   f"policy did clearly less at {client_counts(beaten)} clients.")
    out.append(verdict)
    return out


def _fixed_clause(c: Contention, n: int) -> str:
    calls, ms = c.get("fixed", n, "contention_calls"), c.get("fixed", n, "contention_completion_ms")
    if not (calls.known and ms.known):
        return ""
    return f" A fixed wait behaved much the same: {calls_words(calls)} and {secs_words(ms)} at {n} clients."


def time_sentences(c: Contention) -> list[str]:
    out = []
    n_max = c.clients[-1]
    soonest = c.ranking(n_max, "contention_completion_ms", GROWING)
    if soonest:
        best, b = soonest[0]
        runner = (f", ahead of {soonest[1][0]} ({secs_words(soonest[1][1])})" if len(soonest) > 1 else "")
        out.append(f"Of the policies whose wait grows, {best} finished soonest at {n_max} clients: {secs_words(b)}{runner}.")
    dj = [(n, c.get("decorrelated_jitter", n, "contention_completion_ms"), c.get("full_jitter", n, "contention_completion_ms"))
          for n in c.clients]
    dj = [(n, d, f) for n, d, f in dj if d.known and f.known]
    if dj:
        sooner = [n for n, d, f in dj if d.mean < f.mean]
        clear = [n for n, d, f in dj if d.mean < f.mean and separated(d, f)]
        n, d, f = dj[-1]
        agree = ("as Brooker (2015) found (decorrelated finishes slightly sooner)" if len(sooner) > len(dj) / 2
                 else "unlike Brooker (2015), who found decorrelated finishes slightly sooner")
        out.append(f"decorrelated_jitter finished sooner than full_jitter at {n_of(len(sooner), len(dj), 'client counts')} "
                   f"({len(clear)} beyond the 95% CIs; at {n} clients {secs_words(d)} against {secs_words(f)}), {agree}.")
    none_fast = [n for n in c.clients if (r := c.ranking(n, "contention_completion_ms")) and r[0][0] == "no_backoff"]
    none_most = [n for n in c.clients if (r := c.ranking(n, "contention_calls")) and r[-1][0] == "no_backoff"]
    none_calls, fj_calls = c.get("no_backoff", n_max, "contention_calls"), c.get("full_jitter", n_max, "contention_calls")
    if none_calls.known and fj_calls.known:
        fast_but_wasteful = len(none_fast) > len(c.clients) / 2 and len(none_most) > len(c.clients) / 2
        out.append(f"Retrying at once (no_backoff) finished soonest at {n_of(len(none_fast), len(c.clients), 'client counts')} "
                   f"and made the most calls at {n_of(len(none_most), len(c.clients), 'client counts')} "
                   f"({calls_words(none_calls)} at {n_max} clients, {none_calls.mean / fj_calls.mean:.1f}x full_jitter's): "
                   + ("fast but wasteful, as Brooker found." if fast_but_wasteful
                      else "not the 'fast but wasteful' pattern Brooker found.")
                   + _fixed_clause(c, n_max))
    exp_slowest = [n for n in c.clients if (r := c.ranking(n, "contention_completion_ms")) and r[-1][0] == "exponential"]
    more_than_jitter = [n for n in c.clients
                        if c.get("exponential", n, "contention_calls").known
                        and all(c.get("exponential", n, "contention_calls").mean > c.get(p, n, "contention_calls").mean
                                for p in JITTERED if c.get(p, n, "contention_calls").known)]
    fewer_than_none = [n for n in c.clients
                       if c.get("exponential", n, "contention_calls").mean < c.get("no_backoff", n, "contention_calls").mean]
    exp_t = c.get("exponential", n_max, "contention_completion_ms")
    if exp_t.known:
        total = len(c.clients)
        sentence = (f"Exponential backoff without jitter took the longest at {n_of(len(exp_slowest), total, 'client counts')} "
                    f"({secs_words(exp_t)} at {n_max} clients) and made more calls than every jittered policy at "
                    f"{n_of(len(more_than_jitter), total, 'client counts')}")
        if len(exp_slowest) == total and len(more_than_jitter) == total:
            sentence += ", as Brooker found"
        if "no_backoff" in c.policies:
            sentence += (f"; against retrying at once it made fewer calls at {n_of(len(fewer_than_none), total, 'client counts')}"
                         + (", so 'worst on both' holds against the jittered policies, not against no backoff"
                            if fewer_than_none else ""))
        out.append(sentence + ".")
    return out
