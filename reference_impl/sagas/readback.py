"""The final state of the orders and the three participant databases, as the checker reads it
(invariants.World): for the tests, the live harness and `saaslab check sagas`."""

from __future__ import annotations

import json

from reference_impl.common.db import Pool
from reference_impl.sagas.invariants import (
    ChargeRow,
    OrderRow,
    PaymentRow,
    ReservationRow,
    ShipmentRow,
    StockRow,
    World,
)
from reference_impl.sagas.participants import Participants, database_name


async def read_world(pool: Pool, participants: Participants, *, tenants: list[str] | None = None) -> World:
    """Everything (of `tenants`, if given) in `sagas.orders` and the participants' databases."""
    only = tenants
    async with pool.connection() as c:
        orders = await c.fetch("SELECT id, tenant_id, status, request, created_us, finished_us, idempotency_key"
                               " FROM sagas.orders WHERE $1::text[] IS NULL OR tenant_id = ANY($1)", only)
    async with participants.pools["inventory"].connection() as c:
        stock = await c.fetch("SELECT tenant_id, sku, on_hand, reserved, shipped, stocked FROM saga_inventory.stock"
                              " WHERE $1::text[] IS NULL OR tenant_id = ANY($1)", only)
        reservations = await c.fetch("SELECT key, saga_id, tenant_id, items, state FROM saga_inventory.reservations"
                                     " WHERE $1::text[] IS NULL OR tenant_id = ANY($1)", only)
        prepared = [r["gid"] for r in await c.fetch("SELECT gid FROM pg_prepared_xacts WHERE database = ANY($1::text[])",
                                                          [database_name(u) for u in participants.urls.values()])]
    async with participants.pools["payments"].connection() as c:
        payments = await c.fetch("SELECT key, saga_id, amount, state, refunded FROM saga_payments.payments"
                                 " WHERE $1::text[] IS NULL OR tenant_id = ANY($1)", only)
        charges = await c.fetch("SELECT token, reference, account, amount, status FROM lab_provider.charges"
                                " WHERE $1::text[] IS NULL OR account = ANY($1)", only)
    async with participants.pools["shipping"].connection() as c:
        shipments = await c.fetch("SELECT key, saga_id, state FROM saga_shipping.shipments"
                                  " WHERE $1::text[] IS NULL OR tenant_id = ANY($1)", only)

    def units(request: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in json.loads(request)["items"]:
            out[item["sku"]] = out.get(item["sku"], 0) + int(item["qty"])
        return out

    return World(
        orders=[OrderRow(r["id"], r["tenant_id"], r["status"], json.loads(r["request"])["amount"], units(r["request"]),
                         r["created_us"], r["finished_us"], r["idempotency_key"]) for r in orders],
        stock=[StockRow(*r) for r in stock],
        reservations=[ReservationRow(r["key"], r["saga_id"], r["tenant_id"], json.loads(r["items"]), r["state"])
                      for r in reservations],
        payments=[PaymentRow(*r) for r in payments],
        charges=[ChargeRow(*r) for r in charges],
        shipments=[ShipmentRow(*r) for r in shipments],
        prepared_xacts=prepared,
    )
