"""The idempotency report's text about the setup: the designs, the simulated workload, its replay of the
live plan, and the live run."""

from __future__ import annotations

from typing import Any

from saaslab.report import RunData, fmt_g, fmt_list
from saaslab.report.evidence import NO_WORKLOAD, generator_line, live_run_line, simulated_setup
from saaslab.reports.idempotency.view import PATTERN

# --- text about the setup ---------------------------------------------------------------------------

DESIGN_TEXT = {
    "none": ("The deliberately unsafe baseline: every attempt executes with a fresh provider token, so a retried or "
             "double-clicked payment charges again. It exists so the checker can be shown to catch duplicates."),
    "redis": ("An atomic claim of the key plus the stored response in one Redis hash (claim.lua, the twin of "
              "core.decide); the payment charges with the claim's token, writes the payment row, stores the "
              "response. Nothing durable marks the steps in between, and there is no completer."),
    "postgres": ("brandur's atomic phases started → charge_created → finished, each one transaction, with the "
                 "request's parameters stored with the claim; a completer resumes claims abandoned past the lock "
                 "timeout with the same provider token."),
}


def _setup_lines(params: dict[str, Any]) -> list[str]:
    """The simulated workload, faults and clients, from run.json's `setup` (KeyError if one is missing)."""
    p = params["setup"]
    loads = ", ".join(fmt_g(x) for x in params.get("load_points", []))
    lines = [
        f"Payments: Poisson arrivals at {loads} x capacity ({fmt_g(p['capacity_rps'])} payments/s: {p['workers']} "
        f"workers x {p['slots']} slots, a handler of {fmt_g(p['handler_ms'])} ms + {fmt_g(p['handler_overhead_ms'])} ms "
        f"mean overhead, a provider call of {fmt_g(p['provider_ms'])} ms + {fmt_g(p['provider_jitter_ms'])} ms mean "
        f"jitter) for {fmt_g(p['duration_s'])} s; {fmt_g(100 * p['p_double_click'])}% are double-clicked within "
        f"{fmt_g(p['double_click_ms'])} ms.",
        f"Clients: {fmt_g(p['client_timeout_ms'])} ms timeout per attempt; {p['retry_policy']} backoff (base "
        f"{fmt_g(p['retry_base_ms'])} ms, cap {fmt_g(p['retry_cap_ms'])} ms), at most {p['max_attempts']} attempts, "
        "Retry-After honoured (reference_impl/retries/core.py).",
        f"Provider faults per call: slow {fmt_g(100 * p['p_slow'])}% (+{fmt_g(p['slow_ms'])} ms), declined "
        f"{fmt_g(100 * p['p_fail'])}%, timeout after the charge {fmt_g(100 * p['p_timeout_after_effect'])}% (the service "
        "answers 504 with Retry-After: 1).",
        f"Crashes: the worker process dies with probability {fmt_g(100 * p['p_crash'])}% at each of "
        f"{fmt_list(list(p['crash_points']))}, dropping every attempt on it, and restarts after "
        f"{fmt_g(p['restart_ms'])} ms.",
        f"Claims lock for {fmt_g(p['lock_timeout_s'])} s (shorter than the service's 90 s default, so recoveries happen "
        f"within a run); the postgres completer passes every {fmt_g(p['completer_interval_s'])} s, and a run ends once "
        "it has finished every claim.",
    ]
    seeds = len(params.get("seeds") or [])
    if seeds:
        lines.append(f"{seeds} seeds per design and load point{' (quick durations)' if params.get('quick') else ''}.")
    return lines


def _as_live_line(params: dict[str, Any]) -> str:
    """The simulation's replay of the live plan, from run.json's `as_live` (KeyError if a field is missing)."""
    a = params["as_live"]
    p, loads = a["setup"], ", ".join(fmt_g(x) for x in a["load_points"])
    lo, hi = (fmt_g(100 * x) for x in p["slow_phase"])
    crashes = fmt_list([f"{point} ({fmt_g(100 * at)}%)" for at, point in p["crash_at"]])
    budget = p["retry_budget"]
    clicks = " or ".join(str(n) for n in p["clicks"])
    text = (f"The live plan, replayed in the model (`aslive_*` rows): loads {loads} x "
            f"{fmt_g(p['measured_capacity_rps'])} payments/s (the capacity with nothing armed) for "
            f"{fmt_g(p['duration_s'])} s, {len(a.get('seeds') or [])} seeds, on {p['workers']} workers x {p['slots']} "
            f"slots with a {fmt_g(p['lock_timeout_s'])} s lock; {fmt_g(100 * p['p_double_click'])}% of payments "
            f"clicked by {clicks} clients within {fmt_g(p['double_click_ms'])} ms; at most {p['max_attempts']} attempts "
            f"and a shared retry budget ({budget[0]}% of successes + {budget[1]}/s, burst {budget[2]}); the provider "
            f"slow ({fmt_g(100 * p['p_slow'])}%, +{fmt_g(p['slow_ms'])} ms) from {lo}% to {hi}% of the run, else "
            f"{fmt_g(100 * p['p_timeout_after_effect'])}% timing out after the charge; one-shot crashes at {crashes}")
    if p.get("reconcile_after_s") is not None:
        text += (f"; {fmt_g(p['reconcile_after_s'])} s after the last client, one more client for each payment whose "
                 "clients all gave up")
    return text + "."


def workload(sim: RunData | None, live: RunData | None) -> list[str]:
    lines = []
    if sim is not None and sim.parameters.get("setup"):
        lines += simulated_setup(PATTERN, sim.parameters, _setup_lines)
    if sim is not None and sim.parameters.get("as_live"):
        lines += simulated_setup(PATTERN, sim.parameters, lambda p: [_as_live_line(p)], "replay of the live plan")
    if live is not None:
        keys = ("load_points", "duration_s", "rate", "workers", "seed", "designs")
        lines.append(live_run_line(live.parameters, keys))
        lines += [g] if (g := generator_line(live)) else []
    return lines or [NO_WORKLOAD]
