"""The sagas report's text about the setup: the designs, the simulated workload and faults, the live run."""

from __future__ import annotations

from typing import Any

from saaslab.report import RunData, fmt_g, fmt_list
from saaslab.report.evidence import live_run_line, workload_lines
from saaslab.reports.sagas.view import PATTERN

DESIGN_TEXT = {
    "orchestration": ("A durable orchestrator drives the step machine; the order row is the saga log, saved after "
                      "every step's outcome, with a lease; recovery takes over sagas whose lease ran out."),
    "choreography": ("Participants react to events: each step commits with an inbox row and an outbox row; relays "
                     "publish the outboxes to Redis Streams; consumers acknowledge after their step; entries left "
                     "pending are reclaimed after the visibility timeout."),
    "twopc": ("Two-phase commit across the three databases: each step prepares its participant's transaction "
              "(PREPARE TRANSACTION, locks kept), the decision is logged, then COMMIT PREPARED at all three; after a "
              "crash the coordinator finishes what it decided and rolls back the rest."),
    "unsafe": ("The deliberately unsafe baseline: dual writes, each step once, no log, no retry, no compensation. "
               "It exists so the checker can be shown to catch it."),
}


def _setup_lines(params: dict[str, Any]) -> list[str]:
    p = params["setup"]
    loads = ", ".join(fmt_g(x) for x in params.get("load_points", []))
    failures = fmt_list([f"{fmt_g(100 * x)}%" for x in params.get("failure_rates", [])])
    crashes = fmt_list([fmt_g(x) for x in params.get("crash_rates", [])])
    lines = [
        f"Checkouts: Poisson arrivals at {loads} x capacity ({fmt_g(p['capacity_rps'])} orders/s: {p['connections']} "
        f"payments connections over a charge's hold, the provider call of {fmt_g(p['provider_ms'])} ms + "
        f"{fmt_g(p['provider_jitter_ms'])} ms mean jitter inside it) for {fmt_g(p['duration_s'])} s; one or two of "
        f"{p['skus']} SKUs (Zipf {fmt_g(p['zipf_s'])}), stock for {fmt_g(100 * p['stock_cover'])}% of the expected "
        f"demand, {fmt_g(100 * p['p_decline'])}% of cards declined.",
        f"Databases: {p['connections']} connections each; a statement costs {fmt_g(p['rtt_ms'])} ms + "
        f"{fmt_g(p['statement_ms'])} ms mean; Redis {fmt_g(p['redis_rtt_ms'])} ms; relays poll every "
        f"{fmt_g(p['relay_poll_ms'])} ms.",
        f"Faults: participant failure rates {failures} per attempt (half before the effect, half after it with the "
        f"answer lost) x crash rates {crashes} per second of the driving process (back after "
        f"{fmt_g(p['restart_ms'])} ms), while orders arrive.",
        f"The service's settings: step timeout {fmt_g(p['step_timeout_s'])} s; {p['retry_policy']} backoff (base "
        f"{fmt_g(p['retry_base_ms'])} ms, cap {fmt_g(p['retry_cap_ms'])} ms), {p['max_attempts']} attempts per action; "
        f"lease {fmt_g(p['lease_s'])} s, recovery every {fmt_g(p['recovery_interval_s'])} s, visibility timeout "
        f"{fmt_g(p['visibility_timeout_s'])} s.",
    ]
    seeds = len(params.get("seeds") or [])
    if seeds:
        lines.append(f"{seeds} seeds per design, load and fault condition{' (quick durations)' if params.get('quick') else ''}.")
    return lines


def _live_line(p: dict[str, Any]) -> str:
    try:
        return (f"Live run: load {fmt_g(float(p['load_point']))} ({fmt_g(round(float(p['rate']), 1))} checkouts/s "
                f"offered) for {fmt_g(float(p['duration_s']))} s, designs {', '.join(p['designs'])}; "
                f"{fmt_g(100 * float(p['failure_rate']))}% participant failures injected, "
                f"{fmt_g(float(p['crash_rate']))} worker crashes/s; {p['workers']} service workers.")
    except (KeyError, TypeError, ValueError):
        keys = ("load_point", "duration_s", "rate", "failure_rate", "crash_rate", "designs")
        return live_run_line(p, keys)


def workload(sim: RunData | None, live: RunData | None) -> list[str]:
    return workload_lines(PATTERN, sim, live, _setup_lines, _live_line)
