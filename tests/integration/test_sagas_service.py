"""Sagas through the reference service (docs/contract.md, "Sagas"), on real PostgreSQL and Redis.

In process: the inventory and order routes, their 4xx problems, the Idempotency-Key replay, an order
followed to its end. Then one real uvicorn worker killed by a lab-mode crash fault in the middle of a
saga: a restarted service's recovery finishes it, and the checker passes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from live_app import LiveService, TenantHandle, live_service
from sagas_world import lab

from saaslab.launch import launched
from saaslab.settings import Settings

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "sagas-service-test-token"
FAST = {"saga_retry_base_ms": 2.0, "saga_retry_cap_ms": 20.0, "saga_lease_s": 0.5, "saga_recovery_interval_s": 0.1}


def order_body(sku: str = "sku-1", qty: int = 1, amount: int = 1500) -> dict[str, Any]:
    return {"items": [{"sku": sku, "qty": qty}], "amount": amount, "currency": "EUR"}


@pytest.fixture(scope="module")
async def svc(settings: Settings) -> AsyncIterator[LiveService]:
    async with live_service(settings, **FAST) as service:
        yield service


async def until_terminal(client: httpx.AsyncClient, headers: dict[str, str], order_id: str,
                         timeout_s: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        r = await client.get(f"/v1/orders/{order_id}", headers=headers)
        assert r.status_code == 200, r.text
        if r.json()["status"] != "pending" or time.monotonic() > deadline:
            return r.json()
        await asyncio.sleep(0.05)


async def test_stock_and_a_checkout_that_completes(svc: LiveService) -> None:
    tenant = await svc.new_tenant()
    r = await svc.client.put("/v1/inventory/sku-1", json={"on_hand": 3}, headers=tenant.headers)
    assert r.status_code == 200 and r.json() == {"sku": "sku-1", "on_hand": 3, "reserved": 0}
    keyed = {**tenant.headers, "Idempotency-Key": "checkout-1"}
    first = await svc.client.post("/v1/orders", json=order_body(qty=2), headers=keyed)
    assert first.status_code == 202, first.text
    assert first.json()["status"] == "pending"
    replay = await svc.client.post("/v1/orders", json=order_body(qty=2), headers=keyed)
    assert replay.headers.get("Idempotent-Replayed") == "true" and replay.content == first.content
    done = await until_terminal(svc.client, tenant.headers, first.json()["id"])
    assert done["status"] == "completed" and done["design"] == "orchestration"
    assert [(s["name"], s["state"]) for s in done["steps"]] == [
        ("reserve", "done"), ("charge", "done"), ("schedule", "done"), ("commit", "done")]
    assert all(s["at"] for s in done["steps"])
    r = await svc.client.get("/v1/inventory/sku-1", headers=tenant.headers)
    assert r.json() == {"sku": "sku-1", "on_hand": 1, "reserved": 0}
    # Out of stock: refused at the first step, so nothing happened at all.
    short = await svc.client.post("/v1/orders", json=order_body(qty=5), headers={**tenant.headers,
                                                                                "Idempotency-Key": "checkout-2"})
    assert (await until_terminal(svc.client, tenant.headers, short.json()["id"]))["status"] == "failed"
    listed = (await svc.client.get("/v1/orders", params={"status": "completed"}, headers=tenant.headers)).json()
    assert [o["id"] for o in listed["items"]] == [first.json()["id"]] and listed["next_cursor"] is None
    assert len(await svc.all_items(tenant, "orders", limit=1)) == 2
    # Another tenant sees none of it.
    other = await svc.new_tenant()
    assert (await svc.client.get(f"/v1/orders/{first.json()['id']}", headers=other.headers)).status_code == 404
    assert (await svc.client.get("/v1/inventory/sku-1", headers=other.headers)).status_code == 404


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/v1/orders", order_body(), 400),  # no Idempotency-Key
    ("POST", "/v1/orders", {"items": [], "amount": 1, "currency": "EUR"}, 422),
    ("POST", "/v1/orders", {**order_body(), "amount": "12"}, 422),
    ("POST", "/v1/orders", {**order_body(), "currency": "euro"}, 422),
    ("POST", "/v1/orders", {**order_body(), "tenant_id": "x"}, 422),
    ("POST", "/v1/orders", {"items": [{"sku": "a", "qty": 0}], "amount": 1, "currency": "EUR"}, 422),
    ("PUT", "/v1/inventory/sku-1", {"on_hand": -1}, 422),
    ("PUT", "/v1/inventory/sku-1", {"on_hand": "3"}, 422),
    ("PUT", "/v1/inventory/bad%20sku", {"on_hand": 3}, 422),
    ("GET", "/v1/orders?status=lost", None, 422),
    ("GET", "/v1/orders?cursor=%%%", None, 400),
    ("GET", "/v1/orders/nope", None, 404),
])
async def test_bad_input_is_a_problem(svc: LiveService, method: str, path: str, body: Any, status: int) -> None:
    tenant = await svc.new_tenant()
    headers = dict(tenant.headers)
    if method == "POST" and status != 400:
        headers["Idempotency-Key"] = uuid.uuid4().hex
    r = await svc.client.request(method, path, json=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"


async def test_a_worker_killed_mid_saga_is_finished_by_recovery_after_restart(settings: Settings) -> None:
    config = settings.model_copy(update={"admin_token": ADMIN_TOKEN, "lab_mode": True, "saga": "orchestration",
                                         "redis_prefix": f"{settings.redis_prefix}-{uuid.uuid4().hex[:6]}", **FAST})
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with launched(config) as svc:
        async with httpx.AsyncClient(base_url=svc.url, timeout=30.0) as client:
            body = (await client.post("/admin/tenants", json={"name": "crash", "plan": "pro"}, headers=admin)).json()
            tenant = TenantHandle(body["tenant_id"], body["api_key"], "pro")
            await client.put("/v1/inventory/sku-1", json={"on_hand": 4}, headers=tenant.headers)
            armed = await client.post("/admin/faults", json={"point": "sagas.charge.after", "mode": "crash"},
                                      headers=admin)
            assert armed.status_code == 201
            r = await client.post("/v1/orders", json=order_body(qty=3),
                                  headers={**tenant.headers, "Idempotency-Key": "killed"})
            assert r.status_code == 202  # the answer left before the background driver reached the fault
            order_id = r.json()["id"]
        assert svc.wait(timeout_s=15) == 70  # faults.CRASH_EXIT_CODE: the worker died mid-saga
    async with live_service(settings, **{**FAST, "saga": "orchestration"}) as restarted:
        done = await until_terminal(restarted.client, tenant.headers, order_id)
        assert done["status"] == "completed", done
    async with lab(settings) as world:
        world.tenant = tenant.id
        results = await world.verdict()
    assert all(r.valid for r in results), [r for r in results if not r.valid]
