"""Tenancy benchmark: what auth plus tenant isolation cost on the hot path.

Throughput of `GET /v1/projects/{id}` (API-key auth, the per-request Redis round trip that meters
usage, a scheduler slot, a repository read under the isolation design) against the bare
`GET /bench/bare` route of the same server, in the same run. Target: at least 0.7x, for auth and
tenancy alone, so the rate limiter is off in those rows. The same comparison then runs with the
limiter on (the service's default stack): the limiter's own cost is `bench/ratelimit.py`'s subject,
and showing both keeps the two from being confused. The server runs
one uvicorn worker pinned to one core and the load generator is pinned to the other, so the two do
not steal each other's CPU.

The machine is shared, so background load drifts while the benchmark runs. Rounds therefore come
in adjacent pairs, in ABBA order (bare-scoped, scoped-bare, ...) so that a drift hits both routes
alike, and the ratio reported is the median of the per-pair ratios. Next to it, the server's own
CPU time per request (from /proc: waiting for a core does not count, though contention still
inflates it) gives a second ratio, and the load generator's CPU use shows whether it, rather than
the server, was the bottleneck.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from bench import httpload
from loadtests.common.provision import Tenant, create_tenant
from saaslab.launch import Service, start_service
from saaslab.services import ServiceError, services_for
from saaslab.settings import Settings

DESIGNS = ("filtered", "rls", "schema")
CONNECTIONS = 32
PAIRS = 4
# 100k requests a second, a bucket of ten million: far beyond any run, within the limiter's exact range.
UNREACHABLE_LIMIT = {"requests": 10_000_000, "window_s": 100}
TARGET = 0.7
TARGET_STACK = "auth + tenancy"


def _pin(cpu: int | None) -> None:
    """Pin this process to one core (None: let it run on any)."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)) if cpu is None else {cpu})


@contextmanager
def bench_services() -> Iterator[Settings]:
    """The PostgreSQL and Redis servers for a benchmark, then this process (the load generator) on core 1.

    Embedded servers inherit the affinity of the process that starts them, so they start before the pin:
    pinned beside the generator they would wait for its core on every round trip (and redis-benchmark's
    rates would be two processes sharing one core), where a deployment's servers, like the machine's own,
    run on any core.
    """
    _pin(None)
    with services_for(Settings()) as settings:
        _pin(1)
        yield settings


SERVER_CPUS = {0} if (os.cpu_count() or 1) > 1 else None
"""The core each benchmark server is pinned to (the load generator takes core 1: `bench_services`)."""
ADMIN_TOKEN = "bench-admin"


def start_server(settings: Settings, port: int | None = None, **env_overrides: str) -> Service:
    """One benchmark server (`saaslab.launch`): one worker pinned to `SERVER_CPUS`, the admin token
    `ADMIN_TOKEN`, Redis keys under `bench` unless overridden; `env_overrides` as `SAASLAB_<SETTING>=value`."""
    overrides = {"redis_prefix": "bench", "admin_token": ADMIN_TOKEN,
                 **{k.removeprefix("SAASLAB_").lower(): v for k, v in env_overrides.items()}}
    # Validated, so that "2000" becomes the integer setting it names.
    return start_service(Settings(**{**settings.model_dump(), **overrides}), port=port, cpus=SERVER_CPUS)


def stop_server(server: Service) -> None:
    server.stop()


def scoped_tenant(base: str, name: str) -> Tenant:
    """A tenant on the enterprise plan under a limit the benchmark never reaches (the limiter decides every
    request as usual, never refusing)."""
    return create_tenant(base, ADMIN_TOKEN, name, plan="enterprise", limits=UNREACHABLE_LIMIT)


def project_request(base: str, port: int, name: str) -> bytes:
    """`GET /v1/projects/{id}` as raw bytes, for a project of a new `scoped_tenant`: the request the tenancy
    and rate-limiting benchmarks send."""
    key = scoped_tenant(base, name).api_key
    r = httpx.post(f"{base}/v1/projects", json={"name": "p"}, headers={"Authorization": f"Bearer {key}"})
    if r.status_code != 201:
        raise ServiceError(f"could not create the benchmark's project: {r.status_code} {r.text}")
    return httpload.build_request("GET", f"/v1/projects/{r.json()['id']}", f"127.0.0.1:{port}",
                                  {"Authorization": f"Bearer {key}"})


def _measure(port: int, request: bytes, seconds: float) -> httpload.LoadResult:
    return httpload.run(httpload.closed_loop("127.0.0.1", port, request, connections=CONNECTIONS,
                                             seconds=seconds))


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def _round(server: psutil.Process, port: int, request: bytes, seconds: float) -> dict:
    """One measured round: throughput, p99, the server's CPU time per request and the client's CPU share."""
    client = psutil.Process()
    server_cpu, client_cpu, started = _cpu_s(server), _cpu_s(client), time.perf_counter()
    result = _measure(port, request, seconds)
    wall = time.perf_counter() - started
    if result.errors:
        raise ServiceError(f"benchmark requests failed: {result.status_counts}")
    return {"rps": result.rps, "p99_ms": result.latency.percentile_ms(99),
            "server_cpu_us": 1e6 * (_cpu_s(server) - server_cpu) / max(result.requests, 1),
            "client_cpu_share": (_cpu_s(client) - client_cpu) / wall}


# The stacks measured: the target's (auth + tenancy) and the default service's, with its limiter.
STACKS = {TARGET_STACK: "off", "+ rate limiter": Settings.model_fields["ratelimit"].default}


def bench_design(settings: Settings, design: str, seconds: float, stack: str = TARGET_STACK) -> dict:
    proc = start_server(settings, SAASLAB_ISOLATION=design, SAASLAB_RATELIMIT=STACKS[stack])
    try:
        base, port = proc.url, proc.port
        requests = {"bare": httpload.build_request("GET", "/bench/bare", f"127.0.0.1:{port}"),
                    "scoped": project_request(base, port, f"bench-{design}")}
        for request in requests.values():  # warm caches, pools and prepared statements
            _measure(port, request, 1.0)
        server = psutil.Process(proc.pid)
        pairs = []
        for i in range(PAIRS):
            order = ("bare", "scoped") if i % 2 == 0 else ("scoped", "bare")
            pairs.append({name: _round(server, port, requests[name], seconds) for name in order})
        bare_rps = [p["bare"]["rps"] for p in pairs]
        scoped_rps = [p["scoped"]["rps"] for p in pairs]
        ratio = statistics.median(p["scoped"]["rps"] / p["bare"]["rps"] for p in pairs)
        cpu_ratio = statistics.median(p["bare"]["server_cpu_us"] / p["scoped"]["server_cpu_us"] for p in pairs)
        return {"design": design, "stack": stack, "ratelimit": STACKS[stack], "bare_rps": bare_rps,
                "scoped_rps": scoped_rps, "ratio": ratio, "cpu_ratio": cpu_ratio, "pairs": pairs,
                "server_cpu_us": {name: statistics.median(p[name]["server_cpu_us"] for p in pairs)
                                  for name in requests},
                "client_cpu_share_max": max(p[n]["client_cpu_share"] for p in pairs for n in requests),
                "meets_target": ratio >= TARGET if stack == TARGET_STACK else None}
    finally:
        stop_server(proc)


def run(out: Path, *, seconds: float = 4.0) -> dict:
    with bench_services() as settings:
        rows = [bench_design(settings, d, seconds, stack) for stack in STACKS for d in DESIGNS]
    md = [f"Throughput of `GET /v1/projects/{{id}}` (auth + tenancy) / bare route, same server, same run "
          f"({CONNECTIONS} keep-alive connections, {PAIRS} ABBA pairs of {seconds:g} s rounds; medians, the "
          f"ratio as the median of per-pair ratios). Target >= {TARGET}x. CPU columns: the server's CPU time "
          f"per request; their ratio is the same comparison, less sensitive to other load on the machine. "
          f"The target applies to the `{TARGET_STACK}` rows (rate limiter off; usage is still metered in "
          f"Redis on every request); the `+ rate limiter` rows add the default limiter "
          f"(`{STACKS['+ rate limiter']}`, under a limit never reached).", "",
          "| stack | isolation | bare rps | scoped rps | ratio | target met | bare CPU/req | scoped CPU/req "
          "| CPU ratio | client CPU (max) |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        met = "n/a" if r["meets_target"] is None else ("yes" if r["meets_target"] else "no")
        md.append(f"| {r['stack']} | {r['design']} | {statistics.median(r['bare_rps']):.0f} | "
                  f"{statistics.median(r['scoped_rps']):.0f} | {r['ratio']:.2f} | "
                  f"{met} | {r['server_cpu_us']['bare']:.0f} us | "
                  f"{r['server_cpu_us']['scoped']:.0f} us | {r['cpu_ratio']:.2f} | "
                  f"{100 * r['client_cpu_share_max']:.0f}% |")
    result = {"benchmark": "tenancy", "designs": rows, "markdown": md, "machine_cpus": os.cpu_count()}
    (out / "tenancy.json").write_text(json.dumps(result, indent=2))
    return result
