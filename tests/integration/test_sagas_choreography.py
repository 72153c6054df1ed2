"""The `choreography` design's own cases on real PostgreSQL and Redis: duplicated, reordered and stale
deliveries apply each step at most once; a delivery that keeps failing is dead-lettered, visible, and
replayed to the end of its saga. tests/integration/test_sagas_designs.py runs it through the crashes
every design must survive."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from live_app import live_service
from sagas_world import Faulty, Lab, broken, lab

from reference_impl.sagas.choreography import DELIVER_POINT, GROUPS, Choreography
from reference_impl.sagas.participants import get_stock
from reference_impl.sagas.relay import DUPLICATE, REORDER, dead_letters, events_stream, replay
from reference_impl.sagas.tasks import wall_clock_us
from saaslab.settings import Settings

SETTLE_S = 30.0
QUICK_REDELIVERY = {"saga_visibility_timeout_s": 0.05, "saga_dead_letter_attempts": 2}


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[Lab]:
    async with lab(settings) as lab_:
        yield lab_


@dataclass
class StreamFaults(Faulty):
    """Faulty, plus the relay's stream faults as the lab's `Faults.take` hands them out (seeded)."""

    duplicate: float = 0.0
    reorder: float = 0.0
    seed: int = 7

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.taken: dict[str, int] = {}

    def take(self, point: str) -> object | None:
        chance = {DUPLICATE: self.duplicate, REORDER: self.reorder}.get(point, 0.0)
        if self._rng.random() < chance:
            self.taken[point] = self.taken.get(point, 0) + 1
            return point
        return None


async def test_duplicated_and_reordered_deliveries_apply_each_step_at_most_once(world: Lab) -> None:
    await world.stock("hot", 15)
    faults = StreamFaults(duplicate=1.0, reorder=0.5)
    saga = world.design("choreography", faults)
    assert isinstance(saga, Choreography)
    for i in range(20):
        await saga.start(world.order(("hot", 1)), f"k{i}", wall_clock_us())
    assert await saga.settle(SETTLE_S)
    assert faults.taken[DUPLICATE] > 0 and faults.taken[REORDER] > 0
    async with world.pool.connection() as c:
        events = await c.fetchval("SELECT count(*) FROM saga_events.outbox WHERE saga_id = ANY($1::text[])",
                                  [o.id for o in (await world.world()).orders])
    assert events > 0

    state = await world.world()
    statuses = [o.status for o in state.orders]
    assert (statuses.count("completed"), statuses.count("failed")) == (15, 5)
    async with world.participants.transaction("inventory") as conn:
        stock = await get_stock(conn, world.tenant, "hot")
    assert stock is not None and (stock.on_hand, stock.reserved, stock.shipped) == (0, 0, 15)
    assert not broken(await world.verdict())

    # A stale event delivered again after its saga ended (the first event of a completed order) changes nothing.
    done = next(o for o in state.orders if o.status == "completed")
    async with world.participants.pools["inventory"].connection() as c:
        first = await c.fetchval("SELECT count(*) FROM saga_events.inbox WHERE saga_id = $1", done.id)
    async with world.pool.connection() as c:
        body = await c.fetchval("SELECT body FROM saga_events.outbox WHERE event_id = $1", f"{done.id}:0")
    await saga.redis.xadd(events_stream(world.settings.redis_prefix), {"event": body})
    assert await saga.settle(SETTLE_S)
    await saga.close()
    assert [o.status for o in (await world.world()).orders].count("completed") == 15
    async with world.participants.pools["inventory"].connection() as c:
        assert await c.fetchval("SELECT count(*) FROM saga_events.inbox WHERE saga_id = $1", done.id) == first
    assert not broken(await world.verdict())


async def test_a_dead_lettered_event_is_visible_and_can_be_replayed(world: Lab) -> None:
    await world.stock("sku-1", 5)
    faults = Faulty(errors={DELIVER_POINT: None})
    saga = world.design("choreography", faults, **QUICK_REDELIVERY)
    assert isinstance(saga, Choreography)
    record = await saga.start(world.order(("sku-1", 2)), "dead", wall_clock_us())
    assert await saga.settle(SETTLE_S)
    prefix = world.settings.redis_prefix
    dead = [d for d in await dead_letters(saga.redis, prefix) if d.event["saga_id"] == record.id]
    # Every group's delivery of the order's first event failed: delivered, then redelivered once, then given up.
    assert sorted(d.group for d in dead) == sorted(GROUPS)
    assert all(d.deliveries == 2 and "injected error" in d.error and d.event["type"] == "checkout.requested"
               for d in dead)
    assert [o.status for o in (await world.world()).orders] == ["pending"]

    faults.errors.clear()  # the cause is fixed
    for d in dead:
        assert await replay(saga.redis, prefix, d.id) is not None
    assert await replay(saga.redis, prefix, dead[0].id) is None  # a dead letter is replayed once
    assert await saga.settle(SETTLE_S)
    await saga.close()
    assert not [d for d in await dead_letters(saga.redis, prefix) if d.event["saga_id"] == record.id]
    assert [o.status for o in (await world.world()).orders] == ["completed"]
    assert not broken(await world.verdict())
    assert json.loads(json.dumps(dead[0].event))["order"]["id"] == record.id


async def test_dead_letters_are_listed_and_replayed_through_the_admin_routes(settings: Settings) -> None:
    async with live_service(settings, saga="choreography", lab_mode=True, saga_retry_base_ms=2.0,
                            saga_retry_cap_ms=20.0, saga_recovery_interval_s=0.1, **QUICK_REDELIVERY) as svc:
        tenant = await svc.new_tenant()
        assert (await svc.client.put("/v1/inventory/sku-9", json={"on_hand": 2}, headers=tenant.headers)).status_code == 200
        # Every delivery fails until the fault is cleared: the order's first event is dead-lettered in each group.
        armed = await svc.client.post("/admin/faults", json={"point": DELIVER_POINT, "mode": "error"},
                                      headers=svc.admin)
        assert armed.status_code == 201, armed.text
        r = await svc.client.post("/v1/orders", json={"items": [{"sku": "sku-9", "qty": 1}], "amount": 700,
                                                      "currency": "EUR"},
                                  headers={**tenant.headers, "Idempotency-Key": "dl-1"})
        assert r.status_code == 202, r.text
        order_id = r.json()["id"]
        assert (await svc.client.get("/admin/sagas/dead-letters")).status_code == 401
        mine: list[dict[str, Any]] = []
        for _ in range(200):
            listed = await svc.client.get("/admin/sagas/dead-letters", headers=svc.admin)
            assert listed.status_code == 200
            mine = [d for d in listed.json()["items"] if d["event"]["saga_id"] == order_id]
            if len(mine) == len(GROUPS):
                break
            await asyncio.sleep(0.05)
        assert sorted(d["group"] for d in mine) == sorted(GROUPS)
        await svc.client.delete("/admin/faults", headers=svc.admin)
        assert (await svc.client.post("/admin/sagas/dead-letters/nope/replay", headers=svc.admin)).status_code == 422
        for d in mine:
            replayed = await svc.client.post(f"/admin/sagas/dead-letters/{d['id']}/replay", headers=svc.admin)
            assert replayed.status_code == 200 and replayed.json()["replayed"] == d["id"]
        again = await svc.client.post(f"/admin/sagas/dead-letters/{mine[0]['id']}/replay", headers=svc.admin)
        assert again.status_code == 404 and again.headers["content-type"].startswith("application/problem+json")
        for _ in range(200):
            status = (await svc.client.get(f"/v1/orders/{order_id}", headers=tenant.headers)).json()["status"]
            if status != "pending":
                break
            await asyncio.sleep(0.05)
        assert status == "completed"
