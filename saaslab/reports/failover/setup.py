"""The failover report's text about the setup: the designs, the simulated cluster, workload and faults, the drills."""

from __future__ import annotations

from typing import Any

from saaslab.report import RunData, fmt_g, fmt_list
from saaslab.report.evidence import live_run_line, workload_lines
from saaslab.reports.failover.view import PATTERN

DESIGN_TEXT = {
    "async": ("Asynchronous streaming replication: a commit is acknowledged once it is local. A leader lease with "
              "Patroni's rule; a primary whose renewals fail fences itself before the lease can lapse."),
    "sync": ("Synchronous replication (synchronous_standby_names ANY 1): a commit is acknowledged once a standby has "
             "it. The same lease and fencing."),
    "unsafe": ("The deliberately unsafe baseline: asynchronous replication and no fencing, so a paused or cut-off "
               "primary keeps taking writes. It exists so the checker can be shown to catch it."),
}


def _timers_line(timers: dict[str, Any]) -> str:
    return "Timer presets (reference_impl/failover/core.py): " + "; ".join(
        f"{name} ttl {fmt_g(t['ttl_s'])} s, loop_wait {fmt_g(t['loop_wait_s'])} s, retry_timeout "
        f"{fmt_g(t['retry_timeout_s'])} s" for name, t in timers.items()) + "."


def _setup_lines(params: dict[str, Any]) -> list[str]:
    s, m, t, loss = params["setup"], params["map"], params["timer_presets"], params["loss"]
    lines = [
        (f"Cluster: a primary and one replica, each with an agent running core.step every loop_wait from a random "
         f"phase; a lease store; {s['pools']} client pools, one on the primary's host. Network round trip "
         f"{fmt_g(s['net_rtt_ms'])} ms, client timeout {fmt_g(s['client_timeout_s'])} s, promotion "
         f"{fmt_g(s['promote_ms'])} ms, rejoin {fmt_g(s['rejoin_s'])} s; "
         f"{fmt_g(100 * s['probe_share'])}% of acknowledged writes are read back."),
        _timers_line(params["timers"]),
        (f"Unavailability: the primary killed under each preset, {fmt_g(t['rate'])} writes/s, "
         f"{t['trials_per_seed']} deaths per seed at random loop phases; per year at an assumed "
         f"{fmt_g(t['incidents_per_year'])} primary losses a year."),
        (f"Lost writes: {fmt_list([fmt_g(x) for x in loss['rates']])} writes/s x replication lag "
         f"{fmt_list([fmt_g(x) for x in loss['lags_ms']])} ms x {fmt_list(loss['faults'])} (pause and partition held "
         f"{fmt_g(loss['hold_s'])} s, the lab's timers), as the drills run them."),
        (f"False-failover map ({m['design']}, no writes): ttl {fmt_list([fmt_g(x) for x in m['ttls_s']])} s "
         f"({m['timers_rule']}) x pauses and latency spikes (about {fmt_g(s['spike_mean_ms'])} ms more per message) "
         f"lasting {fmt_list([fmt_g(x) for x in m['lengths_s']])} s, {m['trials_per_seed']} trials per seed."),
    ]
    seeds = len(params.get("seeds") or [])
    if seeds:
        lines.append(f"{seeds} seeds per cell{' (quick sweep)' if params.get('quick') else ''}.")
    return lines


LIVE_KEYS = ("component", "designs", "faults", "fault", "timers", "hold_s", "lag_ms", "writers", "seed")


def workload(sim: RunData | None, live: RunData | None) -> list[str]:
    return workload_lines(PATTERN, sim, live, _setup_lines, lambda p: live_run_line(p, LIVE_KEYS))
