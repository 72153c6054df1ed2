"""Sharding benchmark: what routing through the shard router costs, per request and per decision.

* Stack ratio: throughput of `GET /v1/projects/{id}` (the full stack: auth, usage metering, scheduler, the read)
  on a service whose tenants live on 3 shard servers (placement looked up through the directory and cached)
  against the same service on one database, in the same run. Goal: at least 0.9x. Both servers run one uvicorn
  worker pinned to the same core; rounds alternate in ABBA pairs so drift hits both alike, and the ratio is the
  median of the per-pair ratios (bench/tenancy.py explains the method).
* Router decision cost per scheme (reference_impl/sharding/core.py): `shard_for` over 16 shards, µs per call.
* Memory for 1,000,000 tenants: a directory holding every tenant's placement (tracemalloc), against the
  hash routers' own state (the ring's points; the others hold the shard list only).
"""

from __future__ import annotations

import json
import os
import statistics
import time
import tracemalloc
import uuid
from pathlib import Path

import psutil

from bench import httpload
from bench.tenancy import _measure, _round, bench_services, project_request, start_server, stop_server
from reference_impl.sharding.core import SCHEMES, Placement, make_router
from reference_impl.sharding.servers import ShardServers

TARGET = 0.9
PAIRS = 4
SHARDS = 3
ROUTER_SHARDS = 16
DECISIONS = 20_000
MEMORY_TENANTS = 1_000_000


def router_costs() -> list[dict]:
    tenants = [str(uuid.UUID(int=i * 2654435761 + 7)) for i in range(DECISIONS)]
    rows = []
    for scheme in SCHEMES:
        router = make_router(scheme, range(ROUTER_SHARDS))
        if scheme == "directory":  # every tenant placed explicitly: a lookup, the directory's hot path
            router = router.with_placements({t: i % ROUTER_SHARDS for i, t in enumerate(tenants)})
        started = time.perf_counter()
        for t in tenants:
            router.shard_for(t)
        rows.append({"scheme": scheme, "us_per_decision": 1e6 * (time.perf_counter() - started) / len(tenants)})
    return rows


def directory_memory() -> dict:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    entries = {str(uuid.UUID(int=i)): Placement(i % ROUTER_SHARDS, 0) for i in range(MEMORY_TENANTS)}
    directory_bytes = tracemalloc.get_traced_memory()[0] - base
    del entries
    base = tracemalloc.get_traced_memory()[0]
    ring = make_router("ring", range(ROUTER_SHARDS))
    ring_bytes = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del ring
    return {"tenants": MEMORY_TENANTS, "directory_mb": directory_bytes / 2**20, "ring_kb": ring_bytes / 1024,
            "ring_points": ROUTER_SHARDS * 100}


def stack_ratio(settings, seconds: float, state_dir: Path) -> dict:
    shards = ShardServers(state_dir, SHARDS)
    shards.start()
    one = sharded = None
    try:
        one = start_server(settings)
        sharded = start_server(settings, SAASLAB_SHARD_URLS=",".join(shards.urls), SAASLAB_SHARDS=str(SHARDS),
                               SAASLAB_REDIS_PREFIX="bench-sharding")
        servers = {"one database": one, "sharded": sharded}
        requests = {name: project_request(s.url, s.port, f"bench-sharding-{uuid.uuid4().hex[:6]}")
                    for name, s in servers.items()}
        for name, s in servers.items():
            _measure(s.port, requests[name], 1.0)
        procs = {name: psutil.Process(s.pid) for name, s in servers.items()}
        pairs = []
        for i in range(PAIRS):
            order = ("one database", "sharded") if i % 2 == 0 else ("sharded", "one database")
            pairs.append({n: _round(procs[n], servers[n].port, requests[n], seconds) for n in order})
        ratio = statistics.median(p["sharded"]["rps"] / p["one database"]["rps"] for p in pairs)
        return {"ratio": ratio, "meets_target": ratio >= TARGET, "pairs": pairs,
                "rps": {n: statistics.median(p[n]["rps"] for p in pairs) for n in servers},
                "server_cpu_us": {n: statistics.median(p[n]["server_cpu_us"] for p in pairs) for n in servers}}
    finally:
        for s in (one, sharded):
            if s is not None:
                stop_server(s)
        shards.stop()


def run(out: Path, *, seconds: float = 4.0) -> dict:
    costs = router_costs()
    memory = directory_memory()
    with bench_services() as settings:
        stack = stack_ratio(settings, seconds, settings.state_dir / "bench")
    md = [f"Full stack `GET /v1/projects/{{id}}` through the shard router ({SHARDS} shard servers, directory) / the "
          f"same stack on one database: {stack['ratio']:.2f}x (goal >= {TARGET}x: "
          f"{'met' if stack['meets_target'] else 'not met'}; {PAIRS} ABBA pairs of {seconds:g} s, median of "
          f"per-pair ratios; {stack['rps']['sharded']:.0f} vs {stack['rps']['one database']:.0f} requests/s, "
          f"server CPU {stack['server_cpu_us']['sharded']:.0f} vs {stack['server_cpu_us']['one database']:.0f} "
          f"us/request).", "",
          f"| router ({ROUTER_SHARDS} shards) | us per decision |", "| --- | --- |",
          *(f"| {r['scheme']} | {r['us_per_decision']:.2f} |" for r in costs), "",
          f"Memory for {memory['tenants']:,} tenants: a directory of every placement {memory['directory_mb']:.0f} MiB "
          f"in this process; the ring's {memory['ring_points']:,} points {memory['ring_kb']:.0f} KiB; mod, jump "
          f"and rendezvous keep the shard list only."]
    result = {"benchmark": "sharding", "stack": stack, "router_costs": costs, "memory": memory, "markdown": md,
              "machine_cpus": os.cpu_count(), "httpload": httpload.__name__}
    (out / "sharding.json").write_text(json.dumps(result, indent=2))
    return result
