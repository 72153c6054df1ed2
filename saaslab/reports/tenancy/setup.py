"""The tenancy report's text about the setup: the designs, the simulated workload and the live run."""

from __future__ import annotations

from typing import Any

from saaslab.report import RunData, fmt_g, fmt_load, fmt_num
from saaslab.report.evidence import generator_line
from saaslab.reports.tenancy.view import NOISY

# --- text about the setup -----------------------------------------------------------------------

def designs(params: dict[str, Any], present: list[str]) -> dict[str, str]:
    slots = params.get("workload", {}).get("slots")
    per_tenant = params.get("bulkhead_per_tenant")
    weights = params.get("plan_weights")
    of_slots = f" of the {slots} slots" if slots else " of the slots"
    cap = f"at most {per_tenant}{of_slots}" if per_tenant else f"a fixed cap{of_slots}"
    known = {
        "fifo": "Pooled FIFO: one queue for all tenants; whoever arrived first gets the next free slot.",
        "bulkhead": f"Bulkheads: FIFO, but one tenant may hold {cap} at once.",
        "wfq": ("Weighted fair queuing (start-time fair queuing): the next slot goes to the queued request with "
                "the smallest virtual start tag, so a tenant that floods only pushes its own requests back"
                + (f"; plan weights {', '.join(f'{k} {w}' for k, w in weights.items())}." if weights else ".")),
    }
    return {d: known.get(d, "(no description)") for d in present}


def workload(sim: RunData | None, live: RunData | None) -> list[str]:
    params = (sim or live).parameters if (sim or live) else {}
    wl = params.get("workload") or {}
    lines = []
    tenants = params.get("tenants")
    if tenants:
        lines.append(f"{len(tenants)} tenants with equal base rates ({', '.join(map(str, tenants))}), "
                     "Poisson arrivals.")
    slots, service_ms = wl.get("slots"), wl.get("service_ms")
    if slots and service_ms:
        lines.append(_server_line(params, slots, service_ms))
    if params.get("load_points"):
        lines.append("Load points (offered load before the burst, fraction of capacity): "
                     f"{', '.join(fmt_load(float(lp)) for lp in params['load_points'])}.")
    if wl.get("burst_multiplier"):
        span = ""
        if wl.get("burst_start_s") is not None and wl.get("burst_length_s") is not None:
            span = f" from t={fmt_g(wl['burst_start_s'])} s for {fmt_g(wl['burst_length_s'])} s"
        of = f" of a {fmt_g(params['duration_s'])} s run" if params.get("duration_s") else ""
        solo = solo_s(params)
        baseline = (f"the first {fmt_g(solo)} s of the same traffic (same seed) without the burst" if solo
                    else "the same traffic (same seed) without the burst")
        lines.append(f"Burst: {NOISY} sends {fmt_g(wl['burst_multiplier'])}x its rate{span}{of}. The solo "
                     f"baseline is {baseline}.")
    if params.get("slo_ms"):
        lines.append(f"Goodput counts requests completed within {fmt_g(params['slo_ms'])} ms.")
    if params.get("seeds") is not None:
        lines.append(f"Simulation seeds: {len(params['seeds'])}.")
    if not lines:
        lines.append("The run recorded no workload parameters (run.json is missing or has none).")
    if live is not None and sim is not None:
        lines.append(_live_line(live.parameters))
    if live is not None:
        lines += [g] if (g := generator_line(live)) else []
    return lines


def _server_line(params: dict[str, Any], slots: Any, service_ms: Any) -> str:
    nominal = slots * 1000.0 / service_ms
    hold, overhead, outside = (params.get(k) for k in ("slot_hold_ms", "slot_overhead_ms", "outside_slot_ms"))
    if not hold:
        return (f"Server: {slots} slots, each request holds one for {fmt_g(service_ms)} ms; capacity "
                f"{fmt_g(nominal)} requests/s.")
    return (f"Server: {slots} slots; each request holds one for {fmt_g(service_ms)} ms plus an exponential "
            f"overhead of mean {fmt_g(overhead or 0)} ms ({fmt_g(hold)} ms on average, calibrated from the live "
            f"service's measured slot hold), and spends a further {fmt_g(outside or 0)} ms outside any slot. Load "
            f"points are fractions of the nominal capacity {fmt_g(nominal)} requests/s ({slots} slots / "
            f"{fmt_g(service_ms)} ms); with the {fmt_g(hold)} ms hold the real capacity is "
            f"{fmt_num(slots * 1000.0 / hold)} requests/s.")


def solo_s(params: dict[str, Any]) -> float | None:
    solo = (params.get("solo_workload") or {}).get("duration_s")
    return float(solo) if solo is not None else None


def burst_of(params: dict[str, Any]) -> tuple[float, float, float] | None:
    """(start, length, run duration) in seconds, wherever the run recorded them."""
    wl = params.get("workload") or {}
    duration = wl.get("duration_s", params.get("duration_s"))
    if wl.get("burst_start_s") is None or wl.get("burst_length_s") is None or duration is None:
        return None
    return float(wl["burst_start_s"]), float(wl["burst_length_s"]), float(duration)


def _live_line(params: dict[str, Any]) -> str:
    parts = []
    if params.get("load_points"):
        parts.append(f"load points {', '.join(fmt_load(float(lp)) for lp in params['load_points'])}")
    burst = burst_of(params)
    if burst:
        parts.append(f"burst from t={fmt_g(burst[0])} s for {fmt_g(burst[1])} s of a {fmt_g(burst[2])} s run")
    solo = solo_s(params)
    if solo:
        parts.append(f"solo baseline {fmt_g(solo)} s")
    if params.get("seed") is not None:
        parts.append(f"seed {params['seed']}")
    fault = params.get("fault") or {}
    if fault.get("point"):
        parts.append(f"service time from a {fault.get('delay_ms', '?')} ms {fault.get('mode', '')} fault at "
                     f"{fault['point']}")
    if params.get("locust_processes"):
        parts.append(f"{params['locust_processes']} Locust process(es)")
    if params.get("wall_s"):
        parts.append(f"{fmt_g(params['wall_s'])} s of wall time")
    return ("Live run: " + "; ".join(parts) + ".") if parts else "Live run: no parameters recorded."
