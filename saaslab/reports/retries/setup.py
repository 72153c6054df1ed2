"""The retries report's text about the setup: the policies and designs, and both experiments' workloads."""

from __future__ import annotations

from typing import Any

from saaslab.report import fmt_g

# --- text about the setup -----------------------------------------------------------------------

DESIGN_TEXT = {
    "no_backoff": "No backoff: retry at once (contention and map).",
    "fixed": "A fixed wait of base between attempts (contention).",
    "exponential": "Capped exponential backoff, min(cap, base·2^n), no jitter.",
    "equal_jitter": "Equal jitter: v/2 + U(0, v/2) with v the capped exponential term.",
    "full_jitter": "Full jitter: U(0, v) with v the capped exponential term.",
    "decorrelated_jitter": "Decorrelated jitter: min(cap, U(base, 3·previous wait)).",
    "single_attempt": "Map baseline: one attempt, never retried.",
    "if_match": "Live clients write with If-Match: the version they read, refused with 412 if it moved.",
    "blind_write": ("Deliberately unsafe live clients: If-Match: *, writing over versions they never read (lost "
                    "updates the checker must catch; `saaslab load retries --unsafe`)."),
    "full_jitter+budget": ("Full jitter, with a retry budget per client host: retries at most a share of successes "
                           "plus a small floor rate (a token bucket refilled by successes)."),
    "full_jitter+breaker": ("Full jitter, with a circuit breaker per client host: after consecutive timeouts calls "
                            "fail fast until a trial call succeeds."),
}


def workload(params: dict[str, Any]) -> list[str]:
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
                     f"to the end of the run (the hold window, {fmt_g(meta.get('hold_s', 5))} s) has a goodput share "
                     f"(requests served by any attempt within the timeout, over requests offered) of at least "
                     f"{fmt_g(100 * meta.get('recovered_share', 0.9))}%. Collapsed (stayed collapsed): over the hold "
                     f"window, long after the spike ended, less than {fmt_g(100 * meta.get('collapsed_share', 0.5))}% of "
                     "the requests offered were served. Otherwise: still draining (most requests served, but not yet "
                     "every bin back).")
    if not lines:
        lines.append("The simulated run recorded no workload parameters (run.json is missing or has none).")
    return lines
