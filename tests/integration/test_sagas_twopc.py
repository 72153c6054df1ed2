"""The `twopc` design's own cases on real PostgreSQL: a coordinator that dies between prepare and commit
leaves in-doubt transactions that recovery resolves (pg_prepared_xacts empty after it), the log's
decision wins over a presumed abort, and a server without prepared transactions is refused in one line.
tests/integration/test_sagas_designs.py runs it through the crashes every design must survive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sagas_world import FAST, Faulty, Lab, broken, lab

from reference_impl.sagas.participants import database_name
from reference_impl.sagas.tasks import wall_clock_us
from reference_impl.sagas.twopc import (
    DECIDED_POINT,
    PREPARED_POINT,
    PreparedTransactionsOff,
    gid,
    parse_gid,
    prepared_capacity,
    timings,
)
from saaslab.settings import Settings

SETTLE_S = 20.0


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[Lab]:
    async with lab(settings) as lab_:
        yield lab_


async def needs_prepared_transactions(world: Lab) -> None:
    if await prepared_capacity(world.participants.pools["inventory"]) <= 0:
        pytest.skip("twopc needs PostgreSQL's max_prepared_transactions > 0; this server has 0")


async def prepared_gids(world: Lab, saga_id: str) -> list[str]:
    databases = [database_name(u) for u in world.participants.urls.values()]
    async with world.participants.pools["inventory"].connection() as c:
        return [r["gid"] for r in await c.fetch("SELECT gid FROM pg_prepared_xacts WHERE database = ANY($1::text[])"
                                                " AND strpos(gid, $2) > 0", databases, saga_id)]


def test_a_gid_names_its_saga_attempt_and_participant() -> None:
    g = gid("0b6f6c1e-2a1b-4f7e-9d55-6f1d0e3a9b11", 3, "payments")
    assert parse_gid(g) == ("0b6f6c1e-2a1b-4f7e-9d55-6f1d0e3a9b11", 3, "payments")
    assert parse_gid("someone-else:1") is None


@pytest.mark.parametrize("point", [PREPARED_POINT, DECIDED_POINT])
async def test_a_coordinator_crash_between_prepare_and_commit_is_resolved_by_recovery(world: Lab, point: str) -> None:
    await needs_prepared_transactions(world)
    await world.stock("sku-1", 5)
    faults = Faulty(crash=point)
    first = world.design("twopc", faults)
    record = await first.start(world.order(("sku-1", 2)), f"k-{point}", wall_clock_us())
    assert await first.settle(SETTLE_S)
    await first.close()
    assert faults.crashed
    in_doubt = await prepared_gids(world, record.id)
    assert sorted(parse_gid(g)[2] for g in in_doubt) == ["inventory", "payments", "shipping"]  # type: ignore[index]

    await asyncio.sleep(FAST["saga_lease_s"] * 2)
    second = world.design("twopc")
    assert await second.recover() >= 1
    assert await second.settle(SETTLE_S)
    await second.close()
    assert await prepared_gids(world, record.id) == []
    state = await world.world()
    assert [o.status for o in state.orders] == ["completed"]
    assert not broken(await world.verdict())
    async with world.pool.connection() as c:
        attempts = await c.fetch("SELECT attempt, decision FROM sagas.twopc_log WHERE saga_id = $1 ORDER BY attempt",
                                 record.id)
    # Before the decision was logged, recovery presumes abort and tries again; after it, it commits.
    expected = [(1, "abort"), (2, "commit")] if point == PREPARED_POINT else [(1, "commit")]
    assert [(r["attempt"], r["decision"]) for r in attempts] == expected


async def test_an_orphan_prepared_transaction_is_rolled_back(world: Lab) -> None:
    """A prepared branch whose attempt has no decision and whose order nobody holds is presumed aborted."""
    await needs_prepared_transactions(world)
    await world.stock("sku-1", 5)
    first = world.design("twopc", Faulty(crash=PREPARED_POINT))
    record = await first.start(world.order(("sku-1", 1)), "k-orphan", wall_clock_us())
    assert await first.settle(SETTLE_S)
    await first.close()
    async with world.pool.connection() as c:  # the order is gone from the log's view: only the orphan scan finds it
        await c.execute("UPDATE sagas.orders SET status = 'failed', due_at_us = 0 WHERE id = $1", record.id)
    assert len(await prepared_gids(world, record.id)) == 3
    second = world.design("twopc")
    assert await second.recover() == 3
    await second.close()
    assert await prepared_gids(world, record.id) == []
    async with world.participants.pools["inventory"].connection() as c:
        assert await c.fetchval("SELECT count(*) FROM saga_inventory.reservations WHERE saga_id = $1", record.id) == 0


async def test_lock_hold_and_time_in_doubt_are_logged(world: Lab) -> None:
    await needs_prepared_transactions(world)
    await world.stock("sku-2", 100)
    saga = world.design("twopc")
    records = await asyncio.gather(*(saga.start(world.order(("sku-2", 1)), f"t{i}", wall_clock_us())
                                     for i in range(10)))
    assert await saga.settle(SETTLE_S)
    await saga.close()
    measured = await timings(world.pool, [r.id for r in records])
    assert len(measured) == 10
    assert all(0 <= doubt <= hold for hold, doubt in measured)


async def test_a_server_without_prepared_transactions_is_refused_in_one_line(world: Lab) -> None:
    if await prepared_capacity(world.participants.pools["inventory"]) > 0:
        pytest.skip("this server has max_prepared_transactions > 0: nothing to refuse")
    saga = world.design("twopc")
    with pytest.raises(PreparedTransactionsOff) as refused:
        await saga.open()
    assert "max_prepared_transactions" in str(refused.value) and "\n" not in str(refused.value)
