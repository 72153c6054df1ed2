"""Every saga design on real PostgreSQL: crashes at every step boundary, contention for the last units,
and a compensation that keeps failing. The checker (reference_impl/sagas/invariants.py) judges each
run from the databases; it must pass every safe design and catch the unsafe one.

A crash is in-process: the fault hooks raise `SimulatedCrash` (a BaseException) at the boundary, the
design's tasks die with it, the design is dropped, and a fresh one recovers from the databases, as a
restarted worker would. tests/integration/test_sagas_service.py crashes a real worker once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from sagas_world import FAST, Faulty, Lab, broken, lab, skip_unless_runnable

from reference_impl.common.db import MigrationError
from reference_impl.sagas.core import CHECKOUT, fault_point
from reference_impl.sagas.orchestration import wall_clock_us
from reference_impl.sagas.participants import ensure_databases, get_stock
from saaslab.settings import Settings

SAFE_DESIGNS = ["orchestration", "twopc", "choreography"]
"""The designs that must keep every invariant."""
UNSAFE_DESIGNS = ["unsafe"]
SETTLE_S = 20.0

FORWARD = [fault_point(s, w) for s in CHECKOUT for w in ("before", "after")]
BACKWARD = [fault_point(s, w, undo=True) for s in CHECKOUT if not s.retriable for w in ("before", "after")]
GIVE_UP = fault_point("schedule", "before")
"""Failing here every time makes the saga give up and compensate every begun step."""


@pytest.fixture
async def world(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[Lab]:
    async with lab(settings) as lab_:
        await skip_unless_runnable(lab_, getattr(request.node, "callspec", None) and request.node.callspec.params.get("design"))
        yield lab_


async def crash_then_recover(world: Lab, design: str, point: str, *, compensate: bool) -> Faulty:
    """Start one checkout with a crash armed at `point`, let it die, recover with a fresh design."""
    errors = {GIVE_UP: None} if compensate else {}
    overrides = {"saga_max_attempts": 1} if compensate else {}
    await world.stock("sku-1", 5)
    faults = Faulty(crash=point, errors=dict(errors))
    first = world.design(design, faults, **overrides)
    await first.start(world.order(("sku-1", 2)), f"k-{point}", wall_clock_us())
    assert await first.settle(SETTLE_S)
    await first.close()
    await asyncio.sleep(FAST["saga_lease_s"] * 2)  # the dead driver's lease runs out
    second = world.design(design, Faulty(errors=dict(errors)), **overrides)
    await second.recover()
    assert await second.settle(SETTLE_S)
    await second.close()
    return faults


@pytest.mark.parametrize("design", SAFE_DESIGNS + UNSAFE_DESIGNS)
@pytest.mark.parametrize("point", FORWARD)
async def test_a_crash_at_a_forward_boundary_still_ends_all_done(world: Lab, design: str, point: str) -> None:
    faults = await crash_then_recover(world, design, point, compensate=False)
    assert faults.crashed, f"the crash at {point} never struck"
    failures = broken(await world.verdict())
    if design in UNSAFE_DESIGNS:
        assert failures, f"the checker missed the unsafe design's crash at {point}"
    else:
        assert not failures, failures
        assert [o.status for o in (await world.world()).orders] == ["completed"]


@pytest.mark.parametrize("design", SAFE_DESIGNS + UNSAFE_DESIGNS)
@pytest.mark.parametrize("point", BACKWARD)
async def test_a_crash_at_a_compensation_boundary_still_ends_all_undone(world: Lab, design: str, point: str) -> None:
    faults = await crash_then_recover(world, design, point, compensate=True)
    failures = broken(await world.verdict())
    if design in UNSAFE_DESIGNS:  # it never compensates, so it never reaches the crash: its leftovers are caught
        assert failures, f"the checker missed the unsafe design's leftovers ({point})"
        return
    assert faults.crashed, f"the crash at {point} never struck"
    assert not failures, failures
    assert [o.status for o in (await world.world()).orders] == ["compensated"]


@pytest.mark.parametrize("design", SAFE_DESIGNS)
async def test_fifty_checkouts_for_the_last_ten_units(world: Lab, design: str) -> None:
    await world.stock("hot", 10)
    saga = world.design(design)
    started = await asyncio.gather(*(saga.start(world.order(("hot", 1)), f"k{i}", wall_clock_us()) for i in range(50)))
    assert len({r.id for r in started}) == 50
    assert await saga.settle(SETTLE_S)
    await saga.close()
    state = await world.world()
    statuses = [o.status for o in state.orders]
    assert statuses.count("completed") == 10
    assert statuses.count("compensated") + statuses.count("failed") == 40
    async with world.participants.transaction("inventory") as conn:
        stock = await get_stock(conn, world.tenant, "hot")
    assert stock is not None and (stock.on_hand, stock.reserved, stock.shipped) == (0, 0, 10)
    assert not broken(await world.verdict())


@pytest.mark.parametrize("design", SAFE_DESIGNS)
async def test_a_compensation_that_fails_five_times_still_ends_compensated(world: Lab, design: str) -> None:
    await world.stock("sku-1", 5)
    undo_reserve = fault_point("reserve", "before", undo=True)
    faults = Faulty(errors={GIVE_UP: None, undo_reserve: 5})
    saga = world.design(design, faults, saga_max_attempts=1)
    await saga.start(world.order(("sku-1", 3)), "k", wall_clock_us())
    assert await saga.settle(SETTLE_S)
    await saga.close()
    assert faults.fired[undo_reserve] == 5
    assert [o.status for o in (await world.world()).orders] == ["compensated"]
    assert not broken(await world.verdict())


@pytest.mark.parametrize("design", SAFE_DESIGNS)
async def test_the_same_idempotency_key_starts_one_saga(world: Lab, design: str) -> None:
    await world.stock("sku-1", 5)
    saga = world.design(design)
    a = await saga.start(world.order(("sku-1", 1)), "same", wall_clock_us())
    b = await saga.start(world.order(("sku-1", 1)), "same", wall_clock_us())
    assert a.id == b.id
    assert await saga.settle(SETTLE_S)
    await saga.close()
    assert len((await world.world()).orders) == 1


async def test_a_login_that_may_not_create_databases_gets_one_line_naming_the_right(settings: Settings) -> None:
    assert settings.database_url
    url = urlsplit(settings.database_url)
    role, fresh = f"saga_nocreate_{uuid.uuid4().hex[:8]}", f"{url.path.lstrip('/')}_nocreate"
    as_role = urlunsplit(url._replace(netloc=f"{role}@{url.hostname}:{url.port or 5432}", path=f"/{fresh}"))
    admin = await asyncpg.connect(settings.database_url)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        await admin.execute(f'CREATE DATABASE "{fresh}"')
        with pytest.raises(MigrationError) as refused:
            await ensure_databases(as_role)
        message = str(refused.value)
        assert "\n" not in message and "CREATEDB" in message and f"{fresh}_inventory" in message
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
