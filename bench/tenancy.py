"""Tenancy benchmark: what auth plus tenant isolation cost on the hot path.

Throughput of `GET /v1/projects/{id}` (API-key auth, tenant scheduler slot, repository read
under the isolation design) against the bare `GET /bench/bare` route of the same server, in the
same run, alternating rounds. Target: at least 0.7x. The server runs one uvicorn worker pinned to
one core and the load generator is pinned to the other, so the two do not steal each other's CPU.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench import httpload
from saaslab.services import ServiceError, free_port, services_for
from saaslab.settings import Settings

DESIGNS = ("filtered", "rls", "schema")
CONNECTIONS = 32
ROUNDS = 3
TARGET = 0.7


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def start_server(settings: Settings, port: int, **env_overrides: str) -> subprocess.Popen:
    env = {**os.environ, "SAASLAB_DATABASE_URL": settings.database_url or "",
           "SAASLAB_REDIS_URL": settings.redis_url or "", "SAASLAB_ADMIN_TOKEN": "bench-admin",
           "SAASLAB_REDIS_PREFIX": "bench", **env_overrides}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "reference_impl.app:app_from_env", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--loop", "uvloop", "--http", "httptools", "--no-access-log",
         "--log-level", "warning"],
        env=env, preexec_fn=lambda: _pin(0))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise ServiceError(f"the service did not become ready on port {port}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _measure(port: int, request: bytes, seconds: float) -> httpload.LoadResult:
    return httpload.run(httpload.closed_loop("127.0.0.1", port, request, connections=CONNECTIONS,
                                             seconds=seconds))


def bench_design(settings: Settings, design: str, seconds: float) -> dict:
    port = free_port()
    proc = start_server(settings, port, SAASLAB_ISOLATION=design)
    try:
        base = f"http://127.0.0.1:{port}"
        t = httpx.post(f"{base}/admin/tenants", json={"name": f"bench-{design}", "plan": "enterprise"},
                       headers={"Authorization": "Bearer bench-admin"}).json()
        key = t["api_key"]
        pid = httpx.post(f"{base}/v1/projects", json={"name": "p"},
                         headers={"Authorization": f"Bearer {key}"}).json()["id"]
        host = f"127.0.0.1:{port}"
        bare = httpload.build_request("GET", "/bench/bare", host)
        scoped = httpload.build_request("GET", f"/v1/projects/{pid}", host, {"Authorization": f"Bearer {key}"})
        _measure(port, bare, 1.0)
        _measure(port, scoped, 1.0)  # warm caches and pools
        bare_rps, scoped_rps, p99 = [], [], []
        for _ in range(ROUNDS):
            b = _measure(port, bare, seconds)
            s = _measure(port, scoped, seconds)
            if b.errors or s.errors:
                raise ServiceError(f"benchmark requests failed: bare {b.status_counts}, scoped {s.status_counts}")
            bare_rps.append(b.rps)
            scoped_rps.append(s.rps)
            p99.append((b.latency.percentile_ms(99), s.latency.percentile_ms(99)))
        ratio = statistics.median(scoped_rps) / statistics.median(bare_rps)
        return {"design": design, "bare_rps": bare_rps, "scoped_rps": scoped_rps, "ratio": ratio,
                "p99_ms_bare_scoped": p99, "meets_target": ratio >= TARGET}
    finally:
        stop_server(proc)


def run(out: Path, *, seconds: float = 4.0) -> dict:
    _pin(1)
    with services_for(Settings()) as settings:
        rows = [bench_design(settings, d, seconds) for d in DESIGNS]
    md = [f"Throughput of `GET /v1/projects/{{id}}` (auth + tenancy) / bare route, same server, same run "
          f"({CONNECTIONS} keep-alive connections, {ROUNDS} alternating rounds of {seconds:.0f}s, medians). "
          f"Target >= {TARGET}x.", "",
          "| isolation | bare rps | scoped rps | ratio | target met |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        md.append(f"| {r['design']} | {statistics.median(r['bare_rps']):.0f} | "
                  f"{statistics.median(r['scoped_rps']):.0f} | {r['ratio']:.2f} | "
                  f"{'yes' if r['meets_target'] else 'no'} |")
    result = {"benchmark": "tenancy", "designs": rows, "markdown": md, "machine_cpus": os.cpu_count()}
    (out / "tenancy.json").write_text(json.dumps(result, indent=2))
    return result
