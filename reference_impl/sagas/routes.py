"""The /v1 routes of sagas (docs/contract.md, "Sagas"): stock per SKU, and checkouts as orders.

`POST /v1/orders` needs an Idempotency-Key and answers through idempotency's `IdempotentRequests`
(the replay rules of "Idempotency" hold); the order itself is keyed by (tenant, key) too, so a
handler run again after a crash finds the order its first run recorded. The answer is 202: the
saga runs in the background, and `GET /v1/orders/{id}` follows it.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal, Protocol

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.responses import Response

from reference_impl.common.auth import TENANT_SCOPE_KEY
from reference_impl.common.identity import Tenant
from reference_impl.common.problem import PROBLEM_RESPONSES, Problem, not_found
from reference_impl.common.routing import json_response
from reference_impl.idempotency.http import KEY_SCOPE_KEY, IdempotentRequests
from reference_impl.sagas.core import Item, Order
from reference_impl.sagas.designs import SagaDesign
from reference_impl.sagas.orders import OrderLog
from reference_impl.sagas.participants import Participants, get_stock, put_stock

PAGE_DEFAULT = 20
PAGE_MAX = 100
MAX_ITEMS = 50
MAX_UNITS = 10**9
Sku = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")]


class _Input(BaseModel):
    # Strict: "5" is not a quantity. Unknown fields are errors, which also refuses a smuggled tenant_id.
    model_config = ConfigDict(extra="forbid", strict=True)


class StockIn(_Input):
    on_hand: int = Field(ge=0, le=MAX_UNITS)


class StockOut(BaseModel):
    sku: str
    on_hand: int
    reserved: int


class ItemIn(_Input):
    sku: Sku
    qty: int = Field(gt=0, le=MAX_UNITS)


class OrderIn(_Input):
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_ITEMS)
    amount: int = Field(gt=0, le=10**12)
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class OrderAccepted(BaseModel):
    id: str
    status: Literal["pending"]


class StepOut(BaseModel):
    name: str
    state: Literal["pending", "done", "failed", "compensated"]
    at: str | None


class OrderOut(BaseModel):
    id: str
    status: Literal["pending", "completed", "compensated", "failed"]
    design: str
    items: list[dict[str, object]]
    amount: int
    currency: str
    steps: list[StepOut]


class OrderPage(BaseModel):
    items: list[OrderOut]
    next_cursor: str | None


def _tenant(request: Request) -> Tenant:
    return request.scope[TENANT_SCOPE_KEY]


def _sku(raw: str) -> str:
    try:
        return ItemIn.model_validate({"sku": raw, "qty": 1}).sku
    except ValueError:
        raise Problem(422, "invalid-sku", "A SKU is 1 to 100 letters, digits or . _ : - characters.") from None


class Backend(Protocol):
    """What the routes use, opened in the app's lifespan (wiring.SagaService): read at each request."""

    orders: OrderLog

    @property
    def running(self) -> tuple[SagaDesign, Participants]: ...


def sagas_router(backend: Backend, idempotency: IdempotentRequests) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["sagas"], responses=PROBLEM_RESPONSES)
    orders = backend.orders

    @router.put("/inventory/{sku}", response_model=StockOut)
    async def put_inventory(sku: str, body: StockIn, request: Request) -> Response:
        """Set the units on hand of one of the caller's SKUs; units reserved by orders stay reserved."""
        tenant, sku = _tenant(request), _sku(sku)
        _, participants = backend.running
        async with participants.transaction("inventory") as conn:
            stock = await put_stock(conn, tenant.id, sku, body.on_hand)
        return json_response(stock.to_dict())

    @router.get("/inventory/{sku}", response_model=StockOut)
    async def get_inventory(sku: str, request: Request) -> Response:
        tenant, sku = _tenant(request), _sku(sku)
        _, participants = backend.running
        async with participants.pools["inventory"].connection() as conn:
            stock = await get_stock(conn, tenant.id, sku)
        if stock is None:
            raise not_found("SKU")
        return json_response(stock.to_dict())

    @router.post("/orders", status_code=202, response_model=OrderAccepted)
    async def create_order(body: OrderIn, request: Request) -> Response:
        """Check out: reserve the items, charge the amount, schedule the shipment, all or nothing.
        202 at once; follow the order with GET /v1/orders/{id}."""
        tenant = _tenant(request)
        key: str | None = request.scope.get(KEY_SCOPE_KEY)
        if key is None:
            raise Problem(400, "idempotency-key-required", "POST /v1/orders needs an Idempotency-Key header, so a "
                          "retried checkout is never run twice.")

        async def checkout() -> Response:
            order = Order(str(uuid.uuid4()), tenant.id, tuple(Item(i.sku, i.qty) for i in body.items), body.amount,
                          body.currency)
            design, _ = backend.running
            record = await design.start(order, key, time.time_ns() // 1000)
            return json_response({"id": record.id, "status": "pending"}, status_code=202)

        return await idempotency.respond(request, tenant, checkout)

    @router.get("/orders/{order_id}", response_model=OrderOut)
    async def get_order(order_id: str, request: Request) -> Response:
        record = await orders.get(_tenant(request).id, order_id[:64])
        if record is None:
            raise not_found("order")
        return json_response(record.view())

    @router.get("/orders", response_model=OrderPage)
    async def list_orders(request: Request,
                          status: Literal["pending", "completed", "compensated", "failed"] | None = None,
                          limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
                          cursor: Annotated[str | None, Query(max_length=512)] = None) -> Response:
        try:
            records, next_cursor = await orders.page(_tenant(request).id, status=status, limit=limit, cursor=cursor)
        except ValueError as exc:
            raise Problem(400, "invalid-cursor", f"{exc}.") from None
        return json_response({"items": [r.view() for r in records], "next_cursor": next_cursor})

    return router
