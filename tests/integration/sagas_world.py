"""What the sagas integration tests share: a main database migrated for the orders, the participants'
databases, a design built on them with the test's fault hooks, and the checker's verdict.

A design is built from `SagaDeps`, so a test drops a "crashed" design and builds a fresh one on the
same databases to recover, as a restarted process would.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reference_impl.common.db import Pool, migrate
from reference_impl.sagas.core import Item, Order
from reference_impl.sagas.designs import (
    FaultHooks,
    NoFaults,
    SagaDeps,
    SagaDesign,
    SimulatedCrash,
    make_design,
    policy_of,
)
from reference_impl.sagas.invariants import World, check
from reference_impl.sagas.orders import OrderLog
from reference_impl.sagas.participants import Participants, put_stock
from reference_impl.sagas.readback import read_world
from saaslab.history import CheckResult
from saaslab.settings import Settings

ORDERS_SQL = Path(__file__).resolve().parents[2] / "reference_impl" / "sagas" / "orders.sql"
FAST = {"saga_retry_policy": "exponential", "saga_retry_base_ms": 2.0, "saga_retry_cap_ms": 20.0,
        "saga_lease_s": 0.05, "saga_recovery_interval_s": 0.05, "saga_step_timeout_s": 5.0}
"""Short waits, so recovery and retries happen within a test's time."""


@dataclass
class Faulty:
    """Fault hooks: `crash` raises SimulatedCrash once at that point; each of `errors` fails there
    (up to its count, None: always)."""

    crash: str | None = None
    errors: dict[str, int | None] = field(default_factory=dict)
    crashed: bool = False
    fired: dict[str, int] = field(default_factory=dict)

    def _strike(self, point: str) -> None:
        if point in self.errors:
            left = self.errors[point]
            if left is None or left > 0:
                self.fired[point] = self.fired.get(point, 0) + 1
                if left is not None:
                    self.errors[point] = left - 1
                raise RuntimeError(f"injected error at {point}")
        if point == self.crash and not self.crashed:
            self.crashed = True
            raise SimulatedCrash(point)

    async def before(self, point: str) -> None:
        self._strike(point)

    def after(self, point: str) -> None:
        self._strike(point)

    def take(self, point: str) -> None:
        """No provider faults here."""


@dataclass
class Lab:
    settings: Settings
    pool: Pool
    participants: Participants
    orders: OrderLog
    tenant: str = field(default_factory=lambda: "t_" + uuid.uuid4().hex[:10])

    def design(self, name: str, faults: FaultHooks | None = None, **overrides: object) -> SagaDesign:
        settings = self.settings.model_copy(update={**FAST, "saga": name, **overrides})
        return make_design(name, SagaDeps(settings, self.pool, self.participants, self.orders, policy_of(settings),
                                          faults or NoFaults()))

    async def stock(self, sku: str, on_hand: int) -> None:
        async with self.participants.transaction("inventory") as conn:
            await put_stock(conn, self.tenant, sku, on_hand)

    def order(self, *items: tuple[str, int], amount: int = 1000) -> Order:
        return Order(str(uuid.uuid4()), self.tenant, tuple(Item(s, q) for s, q in items), amount, "EUR")

    async def world(self) -> World:
        return await read_world(self.pool, self.participants, tenants=[self.tenant])

    async def verdict(self) -> list[CheckResult]:
        return check(await self.world())


@asynccontextmanager
async def lab(settings: Settings) -> AsyncIterator[Lab]:
    assert settings.database_url
    pool = Pool(settings.database_url, min_size=1, max_size=20)
    await pool.open()
    await migrate(pool, [ORDERS_SQL])
    participants = await Participants.open(settings.database_url, pool_size=12)
    try:
        yield Lab(settings, pool, participants, OrderLog(pool))
    finally:
        await participants.close()
        await pool.close()


async def skip_unless_runnable(world: Lab, design: str | None) -> None:
    """Skip a `twopc` test on a server that cannot prepare transactions (max_prepared_transactions = 0)."""
    if design == "twopc":
        from reference_impl.sagas.twopc import prepared_capacity

        if await prepared_capacity(world.participants.pools["inventory"]) <= 0:
            pytest.skip("twopc needs PostgreSQL's max_prepared_transactions > 0; this server has 0")


def broken(results: list[CheckResult]) -> list[str]:
    return [f"{r.name}: {r.examples[:2]}" for r in results if not r.valid]
