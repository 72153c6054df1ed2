"""The sharding report's text about the setup: the designs, the simulated workload, the live run."""

from __future__ import annotations

from typing import Any

from saaslab import patterns
from saaslab.report import RunData, fmt_g, fmt_list
from saaslab.report.evidence import live_run_line, workload_lines
from saaslab.reports.sharding.view import PATTERN

DESIGN_TEXT = {d.name: d.summary for d in patterns.get(PATTERN).designs}


def _numbers(values: Any) -> str:
    return fmt_list([f"{float(x):,.0f}" if float(x) >= 1000 else fmt_g(x) for x in values or []])


def _setup_lines(params: dict[str, Any]) -> list[str]:
    p, s = params["setup"], params["scale"]
    lines = [
        f"Tenants: {_numbers(s['tenants'])} on {_numbers(s['shards'])} shards; request shares Zipf over ranks with "
        f"exponent {_numbers(params.get('zipf_exponents'))}, the ranks dealt at random per seed; rows in proportion "
        f"({p['mean_rows']:,} per tenant on average). Each seed names its tenants and shards apart.",
        f"Routers: core.py's, the ring with {p['vnodes']} points per shard; the directory starts from jump hashing and "
        f"is rebalanced by load (tolerance {fmt_g(p['rebalance_tolerance'])}) up to {p['rebalance_max_tenants']:,} "
        f"tenants. Growth: N -> N+1 shards over {s['growth_tenants']:,} tenants. Ring spread: "
        f"{_numbers(p['spread_vnodes'])} points per shard, {s['spread_shards']} shards, {s['spread_tenants']:,} equal "
        "tenants.",
        f"Queueing: the hottest shard and a shard at the mean load, {p['shard_slots']} connections each, a request "
        f"holding one {fmt_g(p['service_ms'])} ms + exponential {fmt_g(p['service_jitter_ms'])} ms "
        f"({fmt_g(p['shard_capacity_rps'])} requests/s per shard), Poisson arrivals for {fmt_g(s['queue_duration_s'])} s "
        f"at mean utilisation {_numbers(s['queue_loads'])} ({s['queue_tenants']:,} tenants, {s['queue_shards']} shards).",
        f"Moves: a tenant of {_numbers(s['move_rows'])} rows at {_numbers(s['write_rates'])} writes/s from "
        f"{p['writers']} workers (routing caches re-read after {fmt_g(p['cache_ttl_ms'])} ms) and "
        f"{fmt_g(p['read_rate'])} reads/s; round trip {fmt_g(p['rtt_ms'])} ms, copy {fmt_g(p['copy_row_us'])} µs/row in "
        f"batches of {p['copy_batch_rows']:,}, catch-up {fmt_g(p['apply_us'])} µs/change, fence once a round applies at "
        f"most {p['fence_backlog']} changes (or after {p['max_rounds']} rounds).",
    ]
    seeds = len(params.get("seeds") or [])
    if seeds:
        lines.append(f"{seeds} seeds per design{' (quick scale)' if params.get('quick') else ''}; router memory "
                     f"from seed 0 ({params.get('memory', 'tracemalloc')}).")
    return lines


LIVE_KEYS = ("shards", "tenants", "zipf", "tenant_rows", "write_rate", "duration_s", "router", "mover", "seed")


def workload(sim: RunData | None, live: RunData | None) -> list[str]:
    return workload_lines(PATTERN, sim, live, _setup_lines, lambda p: live_run_line(p, LIVE_KEYS))
