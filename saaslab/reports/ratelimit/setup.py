"""The rate-limiting report's text about the setup: the designs, the simulated workload and the live run."""

from __future__ import annotations

from typing import Any

from saaslab.report import RunData, fmt_g
from saaslab.report.evidence import generator_line, live_run_line
from saaslab.reports.ratelimit.view import policy_text

# --- text about the setup -----------------------------------------------------------------------

def designs(params: dict[str, Any], present: list[str]) -> dict[str, str]:
    policy = params.get("policy") or {}
    limit = (f"{policy['requests']} requests per {fmt_g(policy['window_s'])} s" if policy.get("requests")
             else "the policy")
    known = {
        "fixed_window": ("A counter per epoch-aligned window: one small hash per tenant; a client can spend one "
                         "window's quota just before a boundary and the next just after it."),
        "sliding_log": ("One timestamp per admitted request: exact over any window, memory grows with the limit "
                        f"({limit})."),
        "sliding_counter": ("Cloudflare's estimate: the previous window's count weighted by its overlap with the "
                            "sliding window, plus the current count."),
        "token_bucket": "A bucket of `requests` tokens refilled at `requests` per window (integer token-µs).",
        "gcra": ("The generic cell rate algorithm: one theoretical arrival time per tenant, a burst of `requests` "
                 "allowed at once."),
        "naive": ("The deliberately unsafe design: fixed_window's decision, but the store reads the count and "
                  "writes it back in two round trips, so overlapping requests read the same count."),
    }
    return {d: known.get(d, "(no description)") for d in present}


def workload(sim: RunData | None, live: RunData | None) -> list[str]:
    lines = []
    params = sim.parameters if sim else {}
    policy = params.get("policy") or {}
    if policy:
        lines.append(f"Policy: {policy['requests']} requests per {fmt_g(policy['window_s'])} s per tenant.")
    durations = params.get("durations_s") or {}
    if durations:
        lines.append("Accuracy: one tenant with on/off bursty arrivals at the load point x its limit for "
                     f"{fmt_g(durations.get('accuracy', 0))} s, each decision judged against an exact sliding log.")
    if params.get("boundary_spread") is not None:
        lines.append(f"Boundary: an idle tenant sends load point x the limit evenly over ±"
                     f"{fmt_g(100 * params['boundary_spread'])}% of a window around a boundary.")
    if durations.get("neighbour") is not None:
        lines.append(f"Noisy neighbour: one tenant at the load point x its quota and four at "
                     f"{fmt_g(params.get('quiet_multiple', 0.5))}x theirs, Poisson, {fmt_g(durations['neighbour'])} s.")
    if params.get("servers"):
        hop = params.get("network_hop_us") or {}
        net = (f", each hop {fmt_g(hop['base'])} µs plus a mean {fmt_g(hop['jitter_mean'])} µs jitter"
               if hop.get("base") is not None else "")
        lines.append(f"Clocks: {params['servers']} app servers sharing one Redis{net}, for the first "
                     f"{fmt_g(durations.get('skew', 0))} s of the accuracy workload, clocks agreeing and then "
                     f"±{fmt_g(params.get('skew_ms', 0))} ms apart. Letting the script read Redis's own TIME removes "
                     "the skew in the service.")
    race = params.get("race_policy") or {}
    if race:
        lines.append(f"Race: load point x {race['requests']} requests of one tenant within "
                     f"{fmt_g(params.get('race_spread_us', 0) / 1000)} ms across the app servers, at "
                     f"{race['requests']} per {fmt_g(race['window_s'])} s.")
    if params.get("load_points"):
        lines.append(f"Load points: {', '.join(fmt_g(lp) for lp in params['load_points'])} (x the limit); "
                     f"{len(params.get('seeds') or [])} seeds{' (quick durations)' if params.get('quick') else ''}.")
    if params.get("neighbour_policy"):
        lines.append(f"The noisy neighbour runs under its own policy, {policy_text(params['neighbour_policy'])} "
                     "per tenant: the one the live load test provisions.")
    if live is not None:
        lp = live.parameters
        policy = [f"policy {policy_text(lp['policy'])}"] if lp.get("policy") else []
        lines.append(live_run_line(lp, ("load_points", "duration_s", "workers", "seed", "designs"), policy))
        lines += [g] if (g := generator_line(live)) else []
    if not lines:
        lines.append("The runs recorded no workload parameters (run.json is missing or has none).")
    return lines
