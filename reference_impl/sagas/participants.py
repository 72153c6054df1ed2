"""The checkout's three participants, each on its own PostgreSQL database, and their databases.

Every operation is keyed by the saga step key (`core.step_key`) and idempotent: the first outcome
recorded under a key is the outcome of every later call with it. Every compensation is idempotent
and safe to run first: a compensation that finds no action leaves a *tombstone* under the key, so
the late action is refused; undoing an action that never happened is a no-op.

* inventory (`<db>_inventory`): `reserve` moves units from on hand to reserved, all the order's
  SKUs or none (out of stock: refused); `release` puts them back; `commit` (the retriable step after
  the pivot) moves them from reserved to shipped. Stock never goes negative: rows are locked in SKU
  order, then updated with a conditional UPDATE (`on_hand >= qty`) whose row count must match.
* payments (`<db>_payments`): `charge` through the lab's provider (reference_impl/idempotency/provider.py,
  its table in this database), the step key as the provider's token, so the provider dedupes too;
  `refund` refunds what was charged (also a charge whose record was lost with a crash: it looks the
  token up at the provider), and is a no-op for a charge that never happened.
* shipping (`<db>_shipping`): `schedule` / `cancel` a shipment.

Results: `"ok"` or `"refused"` (certainly no effect). Anything else (a lost connection, a provider
timeout) raises: the outcome is unknown and the step machine retries (core.py).

`reserve`, `release`, `commit`, `schedule` and `cancel` come in two forms: a function over a
connection that runs inside the caller's transaction (two-phase commit prepares it), and a method
of `Participants` that runs it in a transaction of its own.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from reference_impl.common.db import MigrationError, Pool, migrate
from reference_impl.idempotency import provider
from reference_impl.idempotency.provider import ProviderError, ProviderFault, ProviderTimeout
from reference_impl.sagas.core import PARTICIPANTS, Order, Participant, Step, step_key

Result = Literal["ok", "refused"]
SQL = Path(__file__).parent
MIGRATIONS: dict[Participant, tuple[Path, ...]] = {
    "inventory": (SQL / "inventory.sql",),
    "payments": (provider.SCHEMA, SQL / "payments.sql"),
    "shipping": (SQL / "shipping.sql",),
}
# pg_advisory_lock key on the main database: workers starting together must not race CREATE DATABASE
# (two at once fail with "source database template1 is being accessed by other users").
_CREATE_LOCK_KEY = 0x5A6A_0001


# ---------------------------------------------------------------------------------------------
# Databases

def participant_url(database_url: str, participant: Participant) -> str:
    """The participant's database: the main database's URL with `_<participant>` after its name."""
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/") or "postgres"
    return urlunsplit(parts._replace(path=f"/{name}_{participant}"))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


async def ensure_databases(database_url: str) -> dict[Participant, str]:
    """Create each participant's database if missing (the login needs CREATEDB then) and migrate it;
    returns the URLs. A refused right raises MigrationError, one line naming it."""
    urls = {p: participant_url(database_url, p) for p in PARTICIPANTS}
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _CREATE_LOCK_KEY)
        try:
            for url in urls.values():
                name = database_name(url)
                if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                    continue
                try:
                    await conn.execute(f'CREATE DATABASE "{name.replace(chr(34), chr(34) * 2)}"')
                except asyncpg.InsufficientPrivilegeError as e:
                    user = await conn.fetchval("SELECT current_user")
                    raise MigrationError(f"cannot create the sagas participant database {name!r}: {e.message}; "
                                         f"grant the right with ALTER ROLE \"{user}\" CREATEDB, or create it "
                                         "beforehand") from None
                except asyncpg.DuplicateDatabaseError:
                    pass  # another process, without our lock (an older build), got there first
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _CREATE_LOCK_KEY)
    finally:
        await conn.close()
    for participant, url in urls.items():
        pool = Pool(url, min_size=1, max_size=1)
        await pool.open()
        try:
            await migrate(pool, MIGRATIONS[participant])
        finally:
            await pool.close()
    return urls


# ---------------------------------------------------------------------------------------------
# Operations inside the caller's transaction

# DO UPDATE rather than DO NOTHING: the row comes back locked either way, and `inserted` says whose it is.
_UPSERT = ("ON CONFLICT (key) DO UPDATE SET updated_at = clock_timestamp() "
           "RETURNING state, (xmax = 0) AS inserted")


def _items_json(order: Order) -> str:
    return json.dumps(order.units(), sort_keys=True)


async def reserve(conn: asyncpg.Connection, order: Order, key: str) -> Result:
    """Reserve every unit of the order, or none (refused: out of stock, or released already)."""
    row = await conn.fetchrow(
        "INSERT INTO saga_inventory.reservations (key, saga_id, tenant_id, items, state)"
        f" VALUES ($1, $2, $3, $4::jsonb, 'reserved') {_UPSERT}", key, order.id, order.tenant_id, _items_json(order))
    if not row["inserted"]:
        return "ok" if row["state"] in ("reserved", "committed") else "refused"
    units = sorted(order.units().items())
    skus, qtys = [s for s, _ in units], [q for _, q in units]
    # Lock in SKU order (no deadlock between two orders), then move the units only where they are.
    await conn.fetch("SELECT 1 FROM saga_inventory.stock WHERE tenant_id = $1 AND sku = ANY($2::text[])"
                     " ORDER BY sku FOR UPDATE", order.tenant_id, skus)
    moved = await conn.fetch(
        "UPDATE saga_inventory.stock s SET on_hand = s.on_hand - w.qty, reserved = s.reserved + w.qty,"
        " updated_at = clock_timestamp()"
        " FROM unnest($2::text[], $3::bigint[]) AS w(sku, qty)"
        " WHERE s.tenant_id = $1 AND s.sku = w.sku AND s.on_hand >= w.qty RETURNING s.sku",
        order.tenant_id, skus, qtys)
    if len(moved) == len(skus):
        return "ok"
    if moved:  # some SKUs short: put back what moved, in this same transaction
        await _move(conn, order, "on_hand", "reserved", [r["sku"] for r in moved])
    await conn.execute("UPDATE saga_inventory.reservations SET state = 'refused' WHERE key = $1", key)
    return "refused"


async def release(conn: asyncpg.Connection, order: Order, key: str) -> None:
    """Put a reservation's units back; a tombstone if there was none, a no-op if refused or released."""
    row = await conn.fetchrow(
        "INSERT INTO saga_inventory.reservations (key, saga_id, tenant_id, items, state)"
        f" VALUES ($1, $2, $3, $4::jsonb, 'tombstone') {_UPSERT}", key, order.id, order.tenant_id, _items_json(order))
    if row["inserted"] or row["state"] != "reserved":
        return
    await _move(conn, order, "on_hand", "reserved", sorted(order.units()))
    await conn.execute("UPDATE saga_inventory.reservations SET state = 'released' WHERE key = $1", key)


async def commit(conn: asyncpg.Connection, order: Order, reserve_key: str) -> Result:
    """Ship a reservation's units (reserved -> shipped). Keyed by the *reserve* step's key: it moves
    that reservation. Refused only if there is no live reservation, which the saga never asks."""
    state = await conn.fetchval("SELECT state FROM saga_inventory.reservations WHERE key = $1 FOR UPDATE",
                                reserve_key)
    if state == "committed":
        return "ok"
    if state != "reserved":
        return "refused"
    await _move(conn, order, "shipped", "reserved", sorted(order.units()))
    await conn.execute("UPDATE saga_inventory.reservations SET state = 'committed' WHERE key = $1", reserve_key)
    return "ok"


async def _move(conn: asyncpg.Connection, order: Order, to: str, source: str, skus: list[str]) -> None:
    units = order.units()
    await conn.execute(
        f"UPDATE saga_inventory.stock s SET {to} = s.{to} + w.qty, {source} = s.{source} - w.qty,"
        " updated_at = clock_timestamp() FROM unnest($2::text[], $3::bigint[]) AS w(sku, qty)"
        " WHERE s.tenant_id = $1 AND s.sku = w.sku",
        order.tenant_id, skus, [units[s] for s in skus])


async def schedule(conn: asyncpg.Connection, order: Order, key: str) -> Result:
    row = await conn.fetchrow(
        "INSERT INTO saga_shipping.shipments (key, saga_id, tenant_id, items, state)"
        f" VALUES ($1, $2, $3, $4::jsonb, 'scheduled') {_UPSERT}", key, order.id, order.tenant_id, _items_json(order))
    return "ok" if row["state"] == "scheduled" else "refused"


async def cancel(conn: asyncpg.Connection, order: Order, key: str) -> None:
    row = await conn.fetchrow(
        "INSERT INTO saga_shipping.shipments (key, saga_id, tenant_id, items, state)"
        f" VALUES ($1, $2, $3, $4::jsonb, 'tombstone') {_UPSERT}", key, order.id, order.tenant_id, _items_json(order))
    if not row["inserted"] and row["state"] == "scheduled":
        await conn.execute("UPDATE saga_shipping.shipments SET state = 'cancelled' WHERE key = $1", key)


# ---------------------------------------------------------------------------------------------
# Stock, as the inventory routes set and read it

@dataclass(frozen=True, slots=True)
class Stock:
    sku: str
    on_hand: int
    reserved: int
    shipped: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"sku": self.sku, "on_hand": self.on_hand, "reserved": self.reserved}


async def put_stock(conn: asyncpg.Connection, tenant_id: str, sku: str, on_hand: int) -> Stock:
    """Set the units on hand; what reservations hold and what shipped stay as they are."""
    row = await conn.fetchrow(
        "INSERT INTO saga_inventory.stock AS s (tenant_id, sku, on_hand, stocked) VALUES ($1, $2, $3, $3)"
        " ON CONFLICT (tenant_id, sku) DO UPDATE SET on_hand = EXCLUDED.on_hand,"
        " stocked = s.stocked + EXCLUDED.on_hand - s.on_hand, updated_at = clock_timestamp()"
        " RETURNING sku, on_hand, reserved, shipped", tenant_id, sku, on_hand)
    return Stock(*row)


async def get_stock(conn: asyncpg.Connection, tenant_id: str, sku: str) -> Stock | None:
    row = await conn.fetchrow("SELECT sku, on_hand, reserved, shipped FROM saga_inventory.stock"
                              " WHERE tenant_id = $1 AND sku = $2", tenant_id, sku)
    return None if row is None else Stock(*row)


# ---------------------------------------------------------------------------------------------
# The three participants, each operation in a transaction of its own

class Participants:
    """Pools on the three databases, and each step's action and compensation.

    `act(step, order)` and `compensate(step, order)` are what a driver calls for core's `Do` and
    `Undo`; `open` creates and migrates the databases first.
    """

    def __init__(self, urls: dict[Participant, str], *, pool_size: int = 4) -> None:
        self.urls = urls
        self.pools: dict[Participant, Pool] = {p: Pool(url, min_size=1, max_size=pool_size) for p, url in urls.items()}
        # The provider stands for another company's system: its calls never share the pool whose connections
        # hold payment rows locked while they wait for it (a full pool would wait on itself).
        self.provider = Pool(urls["payments"], min_size=1, max_size=pool_size)

    @classmethod
    async def open(cls, database_url: str, *, pool_size: int = 4) -> Participants:
        self = cls(await ensure_databases(database_url), pool_size=pool_size)
        opened: list[Pool] = []
        try:
            for pool in (*self.pools.values(), self.provider):
                await pool.open()
                opened.append(pool)
        except BaseException:
            for pool in opened:
                await pool.close()
            raise
        return self

    async def close(self) -> None:
        for pool in (*self.pools.values(), self.provider):
            await pool.close()

    @contextlib.asynccontextmanager
    async def transaction(self, participant: Participant) -> AsyncIterator[asyncpg.Connection]:
        async with self.pools[participant].connection() as conn, conn.transaction():
            yield conn

    async def _in_tx(self, participant: Participant,
                     op: Callable[[asyncpg.Connection, Order, str], Awaitable[Result | None]],
                     order: Order, key: str) -> Result | None:
        async with self.transaction(participant) as conn:
            return await op(conn, order, key)

    async def act(self, step: Step, order: Order, *, fault: ProviderFault | None = None) -> Result:
        """The step's action; `fault` reaches the payment provider (its own failure modes)."""
        key = step_key(order.id, step)
        if step.name == "reserve":
            return await self._in_tx("inventory", reserve, order, key)  # type: ignore[return-value]
        if step.name == "charge":
            return await self.charge(order, key, fault=fault)
        if step.name == "schedule":
            return await self._in_tx("shipping", schedule, order, key)  # type: ignore[return-value]
        if step.name == "commit":
            return await self._in_tx("inventory", commit, order, step_key(order.id, "reserve"))  # type: ignore[return-value]
        raise KeyError(f"no action for step {step.name!r}")

    async def compensate(self, step: Step, order: Order) -> None:
        key = step_key(order.id, step)
        if step.name == "reserve":
            await self._in_tx("inventory", release, order, key)
        elif step.name == "charge":
            await self.refund(order, key)
        elif step.name == "schedule":
            await self._in_tx("shipping", cancel, order, key)
        else:
            raise KeyError(f"step {step.name!r} has no compensation")

    # -- payments: the provider is another company's system, reached in transactions of its own --------

    async def charge(self, order: Order, key: str, *, fault: ProviderFault | None = None) -> Result:
        """Charge through the provider with the step key as its token. The row stays locked while the
        provider answers, so a refund of the same key waits for the outcome instead of racing it."""
        pool = self.pools["payments"]
        async with pool.connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO saga_payments.payments (key, saga_id, tenant_id, amount, currency, state)"
                f" VALUES ($1, $2, $3, $4, $5, 'charging') {_UPSERT}",
                key, order.id, order.tenant_id, order.amount, order.currency)
            if row["state"] == "charged":
                return "ok"
            if row["state"] != "charging":  # declined, refunded or a tombstone: never charge (again)
                return "refused"
            try:
                made = await provider.charge(self.provider, order.tenant_id, order.amount, order.currency, key, fault,
                                             reference=order.id)
            except ProviderError:
                await conn.execute("UPDATE saga_payments.payments SET state = 'declined' WHERE key = $1", key)
                return "refused"
            except ProviderTimeout:  # it may have charged: an unknown outcome, like our own timeout
                raise TimeoutError("the payment provider did not answer in time") from None
            await conn.execute("UPDATE saga_payments.payments SET state = 'charged', charge_id = $2 WHERE key = $1",
                               key, made.id)
            return "ok"

    async def refund(self, order: Order, key: str) -> None:
        pool = self.pools["payments"]
        async with pool.connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO saga_payments.payments (key, saga_id, tenant_id, amount, currency, state)"
                f" VALUES ($1, $2, $3, $4, $5, 'tombstone') {_UPSERT}",
                key, order.id, order.tenant_id, order.amount, order.currency)
            if row["state"] == "charged":
                charged = True
            elif row["inserted"]:
                # No record, but a charge may have reached the provider before its caller crashed.
                charged = bool(await conn.fetchval(
                    "SELECT 1 FROM lab_provider.charges WHERE account = $1 AND token = $2 AND status = 'succeeded'",
                    order.tenant_id, key))
            else:
                charged = False  # declined, refunded or a tombstone already
            if charged:
                await conn.execute("UPDATE saga_payments.payments SET state = 'refunded', refunded = amount"
                                   " WHERE key = $1", key)
