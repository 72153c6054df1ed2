"""The tenancy service's HTTP contract: tenants, auth, resources, usage, ops routes, lab mode, the gate."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import psycopg
import pytest
import pytest_asyncio
import redis
from live_app import LiveService, count_rows, live_service

from reference_impl.app import create_app
from reference_impl.common.faults import CRASH_EXIT_CODE
from reference_impl.common.usage import usage_key, usage_period
from reference_impl.sagas.core import FAULT_POINTS as SAGA_FAULT_POINTS
from saaslab.launch import launched
from saaslab.services import port_is_free
from saaslab.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture(scope="module")
async def svc(settings: Settings) -> AsyncIterator[LiveService]:
    async with live_service(settings) as live:
        yield live


@pytest_asyncio.fixture(scope="module")
async def lab(settings: Settings) -> AsyncIterator[LiveService]:
    async with live_service(settings, lab_mode=True) as live:
        yield live


# --- tenants and authentication ---------------------------------------------------------------------

async def test_admin_creates_a_tenant_and_only_the_key_hash_is_stored(svc: LiveService, settings: Settings) -> None:
    r = await svc.client.post("/admin/tenants", headers=svc.admin,
                              json={"name": "acme", "plan": "enterprise", "limits": {"requests": 50, "window_s": 10}})
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"tenant_id", "api_key", "plan"} and body["plan"] == "enterprise"
    with psycopg.connect(settings.database_url or "") as conn:
        row = conn.execute("SELECT name, plan, limits, api_key_hash, t::text FROM tenants t WHERE id = %s",
                           (body["tenant_id"],)).fetchone()
    assert row is not None
    name, plan, limits, key_hash, whole_row = row
    assert (name, plan, limits) == ("acme", "enterprise", {"requests": 50, "window_s": 10.0})
    assert key_hash == hashlib.sha256(body["api_key"].encode()).hexdigest()
    assert body["api_key"] not in whole_row


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic dGVzdDp0ZXN0", "Bearer "])
async def test_admin_routes_refuse_without_the_admin_token(svc: LiveService, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    before = count_rows(svc.settings, "tenants")
    r = await svc.client.post("/admin/tenants", json={"name": "x", "plan": "free"}, headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"] == "Bearer"
    assert count_rows(svc.settings, "tenants") == before


async def test_a_tenant_key_is_not_an_admin_token(svc: LiveService) -> None:
    tenant = await svc.new_tenant()
    r = await svc.client.post("/admin/tenants", json={"name": "x", "plan": "free"}, headers=tenant.headers)
    assert r.status_code == 401


@pytest.mark.parametrize("authorization", [None, "Bearer sk_not-a-real-key", "Token abc", "Bearer test-admin-token"])
async def test_v1_routes_need_a_known_api_key(svc: LiveService, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in [("GET", "/v1/projects"), ("POST", "/v1/projects"), ("GET", f"/v1/projects/{uuid.uuid4()}"),
                         ("GET", "/v1/payments"), ("GET", "/v1/usage"), ("GET", "/v1/no-such-route")]:
        r = await svc.client.request(method, path, headers=headers, json={"name": "x"} if method == "POST" else None)
        assert r.status_code == 401, (method, path)
        body = r.json()
        assert body["type"] == "https://saaslab.dev/problems/unauthorized" and body["status"] == 401


# --- resources ----------------------------------------------------------------------------------------

async def test_project_lifecycle(svc: LiveService) -> None:
    tenant = await svc.new_tenant()
    project = await svc.create_project(tenant, name="Apollo")
    assert set(project) == {"id", "name", "created_at"} and project["name"] == "Apollo"
    assert uuid.UUID(project["id"])
    r = await svc.client.get(f"/v1/projects/{project['id']}", headers=tenant.headers)
    assert r.status_code == 200 and r.json() == project
    r = await svc.client.delete(f"/v1/projects/{project['id']}", headers=tenant.headers)
    assert r.status_code == 204 and r.content == b""
    assert (await svc.client.delete(f"/v1/projects/{project['id']}", headers=tenant.headers)).status_code == 404


async def test_payment_is_created_succeeded(svc: LiveService) -> None:
    tenant = await svc.new_tenant()
    payment = await svc.create_payment(tenant, amount=4999, currency="JPY")
    assert {k: payment[k] for k in ("amount", "currency", "status")} == \
        {"amount": 4999, "currency": "JPY", "status": "succeeded"}
    r = await svc.client.get(f"/v1/payments/{payment['id']}", headers=tenant.headers)
    assert r.status_code == 200 and r.json() == payment


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 101}, {"limit": "ten"},
                                   {"cursor": "not-a-cursor"}, {"cursor": "Zm9vfGJhcg"}])
async def test_bad_paging_parameters_are_422(svc: LiveService, query: dict[str, object]) -> None:
    tenant = await svc.new_tenant()
    for resource in ("projects", "payments"):
        r = await svc.client.get(f"/v1/{resource}", params=query, headers=tenant.headers)
        assert r.status_code == 422
        assert r.headers["content-type"] == "application/problem+json"


async def test_usage_counts_every_admitted_v1_request_in_one_key(svc: LiveService, settings: Settings) -> None:
    tenant = await svc.new_tenant()
    await svc.create_project(tenant)
    await svc.client.get("/v1/projects", headers=tenant.headers)
    await svc.client.get(f"/v1/payments/{uuid.uuid4()}", headers=tenant.headers)  # a 404 still counts
    await svc.client.get("/v1/projects", headers={"Authorization": "Bearer sk_bogus"})  # no tenant: not counted
    r = await svc.client.get("/v1/usage", headers=tenant.headers)
    assert r.status_code == 200
    period = usage_period(time.time())
    assert r.json() == {"tenant_id": tenant.id, "period": period, "requests": 4}
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        key = usage_key(settings.redis_prefix, tenant.id, period)
        assert key == f"{settings.redis_prefix}:{{{tenant.id}}}:usage:{period}"
        assert client.get(key) == b"4"
        assert client.ttl(key) > 0
    finally:
        client.close()


async def test_without_an_admin_token_the_app_makes_one(settings: Settings) -> None:
    async with live_service(settings, admin_token=None) as svc:
        token = svc.app.state.admin_token
        assert len(token) >= 32 and token != settings.admin_token
        await svc.new_tenant()  # LiveService.admin reads app.state.admin_token
        r = await svc.client.post("/admin/tenants", json={"name": "x", "plan": "free"},
                                  headers={"Authorization": f"Bearer {settings.admin_token}"})
        assert r.status_code == 401


async def test_workers_starting_together_migrate_a_fresh_database_once(settings: Settings) -> None:
    base, _, _ = (settings.database_url or "").rpartition("/")
    dbname = f"saaslab_m_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))
    try:
        fresh = settings.model_copy(update={"database_url": f"{base}/{dbname}"})
        apps = [create_app(fresh) for _ in range(4)]
        async with AsyncExitStack() as stack:
            await asyncio.gather(*(stack.enter_async_context(app.router.lifespan_context(app)) for app in apps))
        with psycopg.connect(fresh.database_url or "") as conn:
            policies = conn.execute("SELECT tablename, policyname FROM pg_policies ORDER BY tablename").fetchall()
            assert policies == [("payments", "tenant_isolation"), ("projects", "tenant_isolation")]
            assert conn.execute("SELECT count(*) FROM tenants").fetchone() == (0,)
    finally:
        with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(dbname)))


# --- health, readiness, metrics -----------------------------------------------------------------------

async def test_health_readiness_and_bare_baseline(svc: LiveService) -> None:
    assert (await svc.client.get("/healthz")).status_code == 200
    r = await svc.client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    r = await svc.client.get("/bench/bare")
    assert r.status_code == 200 and r.json() == {"ok": True}


async def test_readyz_is_503_while_redis_is_down(settings: Settings) -> None:
    port = next(p for p in range(18150, 18200) if port_is_free(p))  # nothing listens there
    async with live_service(settings, redis_url=f"redis://127.0.0.1:{port}/0") as svc:
        assert (await svc.client.get("/healthz")).status_code == 200
        started = time.monotonic()
        r = await svc.client.get("/readyz")
        assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
        assert time.monotonic() - started < 3.0


async def test_metrics_expose_requests_by_route_and_scheduler_state(svc: LiveService) -> None:
    tenant = await svc.new_tenant()
    project = await svc.create_project(tenant)
    for _ in range(3):
        await svc.client.get(f"/v1/projects/{project['id']}", headers=tenant.headers)
    r = await svc.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'saaslab_http_requests_total{method="GET",route="/v1/projects/{project_id}",status="200"}' in text
    assert 'saaslab_http_request_duration_seconds_bucket{le="0.005",method="GET",' \
           'route="/v1/projects/{project_id}",status="200"}' in text
    for gauge in ("saaslab_scheduler_busy_slots 0.0", "saaslab_scheduler_queued_requests 0.0",
                  "saaslab_scheduler_slots 8.0", "saaslab_scheduler_waits_total"):
        assert gauge in text


# --- lab mode -------------------------------------------------------------------------------------------

async def test_fault_routes_do_not_exist_without_lab_mode(svc: LiveService) -> None:
    for method in ("GET", "POST", "DELETE"):
        r = await svc.client.request(method, "/admin/faults", headers=svc.admin,
                                     json={"point": "tenancy.query", "mode": "error"} if method == "POST" else None)
        assert r.status_code == 404, method


async def test_fault_routes_need_the_admin_token(lab: LiveService) -> None:
    assert (await lab.client.get("/admin/faults")).status_code == 401
    r = await lab.client.post("/admin/faults", json={"point": "tenancy.query", "mode": "error"},
                              headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert lab.app.state.faults.armed == {}


async def test_error_fault_fires_count_times(lab: LiveService) -> None:
    tenant = await lab.new_tenant()
    project = await lab.create_project(tenant)
    r = await lab.client.post("/admin/faults", headers=lab.admin,
                              json={"point": "tenancy.query", "mode": "error", "count": 2})
    assert r.status_code == 201
    listing = (await lab.client.get("/admin/faults", headers=lab.admin)).json()
    assert set(listing["points"]) == {"tenancy.query", "tenancy.commit", "idempotency.provider",
                                      "idempotency.charged", "idempotency.charge_created", *SAGA_FAULT_POINTS,
                                      "sharding.cutover"}
    assert [f["mode"] for f in listing["armed"]] == ["error"]
    statuses = [(await lab.client.get(f"/v1/projects/{project['id']}", headers=tenant.headers)).status_code
                for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert (await lab.client.get("/admin/faults", headers=lab.admin)).json()["armed"] == []


async def test_zero_probability_never_fires_and_delete_clears(lab: LiveService) -> None:
    tenant = await lab.new_tenant()
    r = await lab.client.post("/admin/faults", headers=lab.admin,
                              json={"point": "tenancy.query", "mode": "error", "probability": 0.0})
    assert r.status_code == 201
    for _ in range(5):
        assert (await lab.client.get("/v1/projects", headers=tenant.headers)).status_code == 200
    assert (await lab.client.get("/admin/faults", headers=lab.admin)).json()["armed"][0]["fired"] == 0
    assert (await lab.client.delete("/admin/faults", headers=lab.admin)).status_code == 204
    assert (await lab.client.get("/admin/faults", headers=lab.admin)).json()["armed"] == []


@pytest.mark.parametrize("body", [{"point": "no.such.point", "mode": "error"},
                                  {"point": "tenancy.query", "mode": "explode"},
                                  {"point": "tenancy.query", "mode": "error", "probability": 1.5},
                                  {"point": "tenancy.query", "mode": "error", "count": 0}])
async def test_bad_fault_requests_are_422(lab: LiveService, body: dict[str, object]) -> None:
    r = await lab.client.post("/admin/faults", headers=lab.admin, json=body)
    assert r.status_code == 422
    assert lab.app.state.faults.armed == {}


@pytest.mark.parametrize("design", ["filtered", "rls", "schema"])
async def test_commit_faults_abort_or_complete_the_write(settings: Settings, design: str) -> None:
    async with live_service(settings, lab_mode=True, isolation=design) as lab:
        tenant = await lab.new_tenant()
        await lab.client.post("/admin/faults", headers=lab.admin,
                              json={"point": "tenancy.commit", "mode": "error", "count": 1})
        r = await lab.client.post("/v1/projects", json={"name": "rolled-back"}, headers=tenant.headers)
        assert r.status_code == 503 and r.json()["type"].endswith("/fault-injected")
        assert await lab.all_items(tenant, "projects") == []

        await lab.client.post("/admin/faults", headers=lab.admin,
                              json={"point": "tenancy.commit", "mode": "timeout_after_effect", "count": 1})
        r = await lab.client.post("/v1/projects", json={"name": "done-anyway"}, headers=tenant.headers)
        assert r.status_code == 504 and r.headers["content-type"] == "application/problem+json"
        assert [p["name"] for p in await lab.all_items(tenant, "projects")] == ["done-anyway"]


# --- the scheduler gate ---------------------------------------------------------------------------------

@pytest.mark.parametrize("scheduler", ["fifo", "bulkhead", "wfq"])
async def test_one_slot_serialises_requests_holding_it_for_the_delay(settings: Settings, scheduler: str) -> None:
    delay_ms, n = 80, 5
    async with live_service(settings, lab_mode=True, scheduler=scheduler, scheduler_slots=1) as lab:
        tenants = [await lab.new_tenant(plan) for plan in ("free", "pro", "enterprise")]
        await lab.client.post("/admin/faults", headers=lab.admin,
                              json={"point": "tenancy.query", "mode": "delay", "delay_ms": delay_ms})
        gate = lab.app.state.gate
        started = time.perf_counter()
        responses = await asyncio.gather(*(lab.client.get("/v1/projects", headers=tenants[i % 3].headers)
                                           for i in range(n)))
        elapsed = time.perf_counter() - started
        assert [r.status_code for r in responses] == [200] * n
        assert elapsed >= n * delay_ms / 1000
        assert gate.waits == n - 1
        assert (gate.busy, gate.queued()) == (0, 0)


async def test_enough_slots_means_nobody_queues(settings: Settings) -> None:
    async with live_service(settings, lab_mode=True, scheduler_slots=5) as lab:
        tenant = await lab.new_tenant()
        await lab.client.post("/admin/faults", headers=lab.admin,
                              json={"point": "tenancy.query", "mode": "delay", "delay_ms": 40})
        responses = await asyncio.gather(*(lab.client.get("/v1/projects", headers=tenant.headers) for _ in range(5)))
        assert [r.status_code for r in responses] == [200] * 5
        assert lab.app.state.gate.waits == 0


# --- a real worker process ----------------------------------------------------------------------------

def test_crash_fault_kills_a_uvicorn_worker_started_from_the_env_factory(settings: Settings) -> None:
    config = settings.model_copy(update={"admin_token": "crash-test-token", "lab_mode": True})
    admin = {"Authorization": "Bearer crash-test-token"}
    with launched(config) as svc, httpx.Client(base_url=svc.url, timeout=5.0) as client:
        key = client.post("/admin/tenants", json={"name": "c", "plan": "free"}, headers=admin).json()["api_key"]
        r = client.post("/admin/faults", json={"point": "tenancy.query", "mode": "crash"}, headers=admin)
        assert r.status_code == 201
        with pytest.raises(httpx.TransportError):
            client.get("/v1/projects", headers={"Authorization": f"Bearer {key}"})
        assert svc.wait(timeout_s=10) == CRASH_EXIT_CODE
