"""`sagas.orders` (orders.sql) in the main database: every order and where its saga stands.

Every design keeps its orders here, so the routes read one table whatever `SAASLAB_SAGA` is:
`create` records a new order as pending (idempotent by the tenant's Idempotency-Key), `save` moves
it on (guarded by `version`, so a driver that lost its lease to recovery cannot overwrite a newer
state), `due` finds the pending sagas recovery should resume, `get` and `page` answer the routes.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from reference_impl.common.db import Pool
from reference_impl.sagas.core import Order, Status

_COLUMNS = "id, tenant_id, idempotency_key, design, status, request, steps, state, due_at_us, version, created_us, finished_us"


@dataclass(frozen=True, slots=True)
class OrderRecord:
    id: str
    tenant_id: str
    key: str
    design: str
    status: Status
    order: Order
    steps: list[dict[str, Any]]
    state: dict[str, Any] | None
    due_at_us: int
    version: int
    created_us: int
    finished_us: int | None

    @classmethod
    def of(cls, row: asyncpg.Record) -> OrderRecord:
        return cls(row["id"], row["tenant_id"], row["idempotency_key"], row["design"], row["status"],
                   Order.from_dict(json.loads(row["request"])), json.loads(row["steps"]),
                   json.loads(row["state"]) if row["state"] is not None else None, row["due_at_us"], row["version"],
                   row["created_us"], row["finished_us"])

    def view(self) -> dict[str, Any]:
        """The body of `GET /v1/orders/{id}` (docs/contract.md, "Sagas"); `at` in ISO 8601 UTC."""
        return {"id": self.id, "status": self.status, "design": self.design,
                "items": [{"sku": i.sku, "qty": i.qty} for i in self.order.items], "amount": self.order.amount,
                "currency": self.order.currency,
                "steps": [{"name": s["name"], "state": s["state"], "at": _iso(s.get("at_us"))} for s in self.steps]}


def _iso(us: int | None) -> str | None:
    if us is None:
        return None
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).isoformat().replace("+00:00", "Z")


class OrderLog:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def create(self, order: Order, key: str, design: str, steps: list[dict[str, Any]],
                     state: dict[str, Any] | None, now_us: int, *, due_at_us: int = 0,
                     conn: asyncpg.Connection | None = None) -> tuple[OrderRecord, bool]:
        """Record `order` as pending; with the tenant's `key` used before, the order already recorded.
        Returns (record, created). `conn`: inside the caller's transaction."""
        sql = (f"INSERT INTO sagas.orders ({_COLUMNS}) VALUES ($1, $2, $3, $4, 'pending', $5::jsonb, $6::jsonb,"
               " $7::jsonb, $8, 0, $9, NULL) ON CONFLICT (tenant_id, idempotency_key)"
               f" DO UPDATE SET version = sagas.orders.version RETURNING {_COLUMNS}, (xmax = 0) AS inserted")
        args = (order.id, order.tenant_id, key, design, json.dumps(order.to_dict()), json.dumps(steps),
                None if state is None else json.dumps(state), due_at_us, now_us)
        if conn is not None:
            row = await conn.fetchrow(sql, *args)
        else:
            async with self.pool.connection() as c:
                row = await c.fetchrow(sql, *args)
        return OrderRecord.of(row), row["inserted"]

    async def save(self, order_id: str, version: int, status: Status, steps: list[dict[str, Any]],
                   state: dict[str, Any] | None, due_at_us: int, finished_us: int | None = None, *,
                   conn: asyncpg.Connection | None = None) -> int | None:
        """Move an order on from `version`; returns the new version, or None if someone else moved it first."""
        sql = ("UPDATE sagas.orders SET status = $3, steps = $4::jsonb, state = $5::jsonb, due_at_us = $6,"
               " finished_us = $7, version = version + 1 WHERE id = $1 AND version = $2 RETURNING version")
        args = (order_id, version, status, json.dumps(steps), None if state is None else json.dumps(state),
                due_at_us, finished_us)
        if conn is not None:
            return await conn.fetchval(sql, *args)
        async with self.pool.connection() as c:
            return await c.fetchval(sql, *args)

    async def load(self, order_id: str) -> OrderRecord | None:
        async with self.pool.connection() as c:
            row = await c.fetchrow(f"SELECT {_COLUMNS} FROM sagas.orders WHERE id = $1", order_id)
        return None if row is None else OrderRecord.of(row)

    async def get(self, tenant_id: str, order_id: str) -> OrderRecord | None:
        """The tenant's order; another tenant's is None, as one that does not exist."""
        async with self.pool.connection() as c:
            row = await c.fetchrow(f"SELECT {_COLUMNS} FROM sagas.orders WHERE tenant_id = $1 AND id = $2",
                                   tenant_id, order_id)
        return None if row is None else OrderRecord.of(row)

    async def due(self, now_us: int, limit: int = 100) -> list[OrderRecord]:
        """Pending sagas whose time has come (a retry's wait is over, or their driver's lease ran out)."""
        async with self.pool.connection() as c:
            rows = await c.fetch(f"SELECT {_COLUMNS} FROM sagas.orders WHERE status = 'pending' AND due_at_us <= $1"
                                 " ORDER BY due_at_us LIMIT $2", now_us, limit)
        return [OrderRecord.of(r) for r in rows]

    async def page(self, tenant_id: str, *, status: str | None, limit: int,
                   cursor: str | None) -> tuple[list[OrderRecord], str | None]:
        """Newest first; `cursor` is the last page's `next_cursor` (opaque; ValueError if malformed)."""
        after = decode_cursor(cursor) if cursor else None
        async with self.pool.connection() as c:
            rows = await c.fetch(
                f"SELECT {_COLUMNS} FROM sagas.orders WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)"
                " AND ($3::bigint IS NULL OR (created_us, id) < ($3, $4)) ORDER BY created_us DESC, id DESC LIMIT $5",
                tenant_id, status, after[0] if after else None, after[1] if after else "", limit + 1)
        records = [OrderRecord.of(r) for r in rows[:limit]]
        more = len(rows) > limit
        return records, encode_cursor(records[-1].created_us, records[-1].id) if more and records else None


def encode_cursor(created_us: int, order_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_us}:{order_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, order_id = raw.partition(":")
        return int(created), order_id
    except (ValueError, UnicodeDecodeError):
        raise ValueError("malformed cursor: pass the next_cursor of the previous page") from None
