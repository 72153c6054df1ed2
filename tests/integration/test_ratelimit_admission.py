"""The concurrency limiter and the priority load shedder in the reference service, on real PostgreSQL and Redis.

Concurrency: two service workers (two uvicorn processes, one worker each, sharing PostgreSQL and Redis,
so each request's worker is known) slowed by a lab-mode delay fault: 10 simultaneous requests of a
tenant at `limits.concurrency` 2 admit exactly 2; a worker killed (SIGKILL) mid-request gives its slot
back once its lease expires. Shedding: an in-process service at a small capacity, flooded with reads,
other writes and payments: sheddable traffic is shed first and the critical class keeps >= 95% success.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
import redis
from live_app import live_service

from reference_impl.ratelimit.redis_store import concurrency_key
from saaslab.launch import Service, launched
from saaslab.settings import Settings

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "admission-test-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
QUERY_POINT = "tenancy.query"


@asynccontextmanager
async def worker(settings: Settings, prefix: str, **overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Service]]:
    """One uvicorn worker process in lab mode, on its own port; the client and the service (its `pid` the worker's)."""
    # Atomicity is the point: a generous timeout, failing closed, so a slow reply never admits undecided.
    lab = settings.model_copy(update={"redis_prefix": prefix, "lab_mode": True, "ratelimit_timeout_ms": 5000,
                                      "ratelimit_failure": "closed", **overrides})
    with launched(lab, token=ADMIN_TOKEN) as svc:
        async with httpx.AsyncClient(base_url=svc.url, timeout=60.0, limits=httpx.Limits(max_connections=50)) as client:
            yield client, svc


async def slow_down(client: httpx.AsyncClient, delay_ms: int) -> None:
    r = await client.post("/admin/faults", headers=ADMIN, json={"point": QUERY_POINT, "mode": "delay",
                                                                 "delay_ms": delay_ms})
    assert r.status_code == 201, r.text


async def concurrency_tenant(client: httpx.AsyncClient, concurrency: int) -> tuple[str, dict[str, str]]:
    r = await client.post("/admin/tenants", headers=ADMIN, json={
        "name": f"cc-{uuid.uuid4().hex[:6]}", "plan": "pro",
        "limits": {"requests": 10_000, "window_s": 60, "concurrency": concurrency}})
    assert r.status_code == 201, r.text
    return r.json()["tenant_id"], {"Authorization": f"Bearer {r.json()['api_key']}"}


def assert_concurrency_refusal(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("/concurrency-limit")
    assert int(r.headers["Retry-After"]) >= 1


@pytest.mark.parametrize("ratelimit", ["token_bucket", "off"])
async def test_10_simultaneous_slow_requests_at_concurrency_2_admit_exactly_2_across_2_workers(
        settings: Settings, ratelimit: str) -> None:
    """With rate limiting on, the rate limiter's script takes the lease in its own round trip; off, the
    concurrency middleware makes the call itself."""
    prefix = f"{settings.redis_prefix}-cc{uuid.uuid4().hex[:6]}"
    async with AsyncExitStack() as stack:
        workers = [await stack.enter_async_context(worker(settings, prefix, ratelimit=ratelimit))
                   for _ in range(2)]
        clients = [client for client, _ in workers]
        _, headers = await concurrency_tenant(clients[0], concurrency=2)
        for client in clients:
            await slow_down(client, delay_ms=3000)
            # Connections open and the tenant cached before the burst, so its requests arrive together.
            await asyncio.gather(*(client.get("/healthz") for _ in range(5)))
            assert (await client.get("/v1/usage", headers=headers)).status_code == 200
        started = time.monotonic()
        responses = await asyncio.gather(*(clients[i % 2].get("/v1/projects", headers=headers) for i in range(10)))
        elapsed = time.monotonic() - started
    assert Counter(r.status_code for r in responses) == {200: 2, 429: 8}
    for r in responses:
        if r.status_code == 429:
            assert_concurrency_refusal(r)
        assert ("RateLimit-Limit" in r.headers) == (ratelimit != "off")  # the rate limiter decided too
    assert elapsed >= 3.0  # the admitted ones were held by the delay, so the others met them in flight


async def test_a_worker_killed_mid_request_gives_its_slot_back_after_the_lease(settings: Settings) -> None:
    prefix = f"{settings.redis_prefix}-cc{uuid.uuid4().hex[:6]}"
    lease_s = 3.0
    lease = {"concurrency_lease_ms": int(lease_s * 1000)}
    assert settings.redis_url
    r = redis.Redis.from_url(settings.redis_url)
    async with worker(settings, prefix, **lease) as (doomed, doomed_svc), \
            worker(settings, prefix, **lease) as (survivor, _):
        tenant_id, headers = await concurrency_tenant(survivor, concurrency=1)
        key = concurrency_key(prefix, tenant_id)
        await slow_down(doomed, delay_ms=60_000)
        hanging = asyncio.ensure_future(doomed.get("/v1/projects", headers=headers))
        deadline = time.monotonic() + 10
        while r.zcard(key) == 0:  # the doomed worker holds the one slot
            assert time.monotonic() < deadline and not hanging.done()
            await asyncio.sleep(0.02)
        held_at = time.monotonic()
        assert_concurrency_refusal(await survivor.get("/v1/usage", headers=headers))
        os.kill(doomed_svc.pid, signal.SIGKILL)
        doomed_svc.wait(timeout_s=10)
        with pytest.raises(httpx.TransportError):
            await hanging
        # Nobody released the lease: the slot stays taken until it expires, then comes back.
        statuses = []
        while True:
            answer = await survivor.get("/v1/usage", headers=headers)
            statuses.append(answer.status_code)
            if answer.status_code == 200:
                break
            assert_concurrency_refusal(answer)
            assert time.monotonic() - held_at < lease_s + 5, "the slot never came back"
            await asyncio.sleep(0.1)
        came_back_after = time.monotonic() - held_at
    r.close()
    assert statuses[0] == 429 and statuses[-1] == 200
    assert lease_s - 0.5 <= came_back_after <= lease_s + 5


async def test_a_tenant_without_a_concurrency_limit_takes_no_lease(settings: Settings) -> None:
    async with live_service(settings) as svc:
        tenant = await svc.new_tenant()
        assert (await svc.client.get("/v1/usage", headers=tenant.headers)).status_code == 200
        metrics = (await svc.client.get("/metrics")).text
    assert not re.search(r'^saaslab_concurrency_decisions_total\{outcome="admitted"\} [1-9]', metrics, re.M)
    assert settings.redis_url
    r = redis.Redis.from_url(settings.redis_url)
    try:
        assert not r.exists(concurrency_key(settings.redis_prefix, tenant.id))
    finally:
        r.close()


async def test_limits_concurrency_is_validated(settings: Settings) -> None:
    async with live_service(settings) as svc:
        for bad in (0, 10_001, "2", 1.5):
            r = await svc.client.post("/admin/tenants", headers=svc.admin, json={
                "name": "bad", "plan": "pro", "limits": {"requests": 10, "window_s": 1, "concurrency": bad}})
            assert r.status_code == 422, (bad, r.text)
        r = await svc.client.post("/admin/tenants", headers=svc.admin, json={
            "name": "plain", "plan": "pro", "limits": {"requests": 10, "window_s": 1}})
        assert r.status_code == 201
        r = await svc.client.patch(f"/admin/tenants/{r.json()['tenant_id']}", headers=svc.admin,
                                   json={"limits": {"requests": 10, "window_s": 1}})
        assert r.json()["limits"] == {"requests": 10, "window_s": 1}  # no `concurrency: null` stored


# --- the load shedder ----------------------------------------------------------------------------

def metric(text: str, name: str, labels: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_under_overload_sheddable_goes_first_and_critical_keeps_flowing(settings: Settings) -> None:
    # Capacity 20 per worker: reads up to 10 in flight, other writes up to 16, payments up to 20.
    async with live_service(settings, lab_mode=True, shed_capacity=20, scheduler_slots=64) as svc:
        tenant = await svc.new_tenant()
        project = await svc.create_project(tenant)
        r = await svc.client.post("/admin/faults", headers=svc.admin,
                                  json={"point": QUERY_POINT, "mode": "delay", "delay_ms": 2000})
        assert r.status_code == 201

        def reads() -> list[asyncio.Future[httpx.Response]]:
            return [asyncio.ensure_future(svc.client.get(f"/v1/projects/{project['id']}", headers=tenant.headers))
                    for _ in range(40)]

        def writes() -> list[asyncio.Future[httpx.Response]]:
            return [asyncio.ensure_future(svc.client.post("/v1/projects", json={"name": "p"}, headers=tenant.headers))
                    for _ in range(20)]

        def payments() -> list[asyncio.Future[httpx.Response]]:
            return [asyncio.ensure_future(svc.client.post("/v1/payments", json={"amount": 100, "currency": "EUR"},
                                                          headers=tenant.headers)) for _ in range(4)]

        # Waves, each arriving while the earlier ones are still being served.
        sent = {}
        for name, wave in (("sheddable", reads), ("default", writes), ("critical", payments)):
            sent[name] = wave()
            await asyncio.sleep(0.3)
        answers = {name: await asyncio.gather(*futures) for name, futures in sent.items()}
        metrics = (await svc.client.get("/metrics")).text

    success = {name: sum(200 <= r.status_code < 300 for r in rs) / len(rs) for name, rs in answers.items()}
    shed = {name: sum(r.status_code == 503 for r in rs) / len(rs) for name, rs in answers.items()}
    assert success["critical"] >= 0.95, answers["critical"]
    assert shed["sheddable"] > shed["default"] > shed["critical"] == 0.0, shed
    assert {r.status_code for rs in answers.values() for r in rs} <= {200, 201, 503}
    assert (sum(r.status_code != 503 for r in answers["sheddable"]), sum(r.status_code != 503 for r in answers["default"])) \
        == (10, 6)
    for rs in answers.values():
        for r in rs:
            if r.status_code == 503:
                assert r.json()["type"].endswith("/load-shed") and int(r.headers["Retry-After"]) >= 1
                assert r.headers["content-type"].startswith("application/problem+json")
    assert metric(metrics, "saaslab_shed_requests_total", 'class="sheddable"') == 30
    assert metric(metrics, "saaslab_shed_requests_total", 'class="default"') == 14
    assert metric(metrics, "saaslab_shed_requests_total", 'class="critical"') == 0
    assert re.search(r"^saaslab_in_flight_requests 0\.0$", metrics, re.M)  # all answered; /metrics is not /v1
