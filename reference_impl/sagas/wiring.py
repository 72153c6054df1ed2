"""Sagas' service face: the design `SAASLAB_SAGA` names, behind POST /v1/orders and the inventory routes.

At start the participants' databases are created if missing (`<db>_inventory`, `<db>_payments`,
`<db>_shipping`; the login needs CREATEDB for that) and migrated, then the design opens: it recovers
every unfinished saga once, then keeps recovering in the background (designs.py). Needs idempotency's
`IdempotentRequests`, through which POST /v1/orders answers.
"""

from __future__ import annotations

from pathlib import Path

from reference_impl.common.metrics import counter
from reference_impl.common.service import Routes, ServiceContext, ServiceParts
from reference_impl.idempotency.http import IdempotentRequests
from reference_impl.sagas.core import FAULT_POINTS
from reference_impl.sagas.designs import SagaDeps, SagaDesign, make_design, policy_of
from reference_impl.sagas.orders import OrderLog
from reference_impl.sagas.participants import Participants
from reference_impl.sagas.relay import dead_letter_router
from reference_impl.sagas.routes import sagas_router

MIGRATIONS = (Path(__file__).parent / "orders.sql",)
"""The main database's; the participants' own are applied by `Participants.open`."""


class SagaService:
    """The design and the participants' pools, opened in the app's lifespan."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self.orders = OrderLog(ctx.pool)
        self.participants: Participants | None = None
        self.design: SagaDesign | None = None

    async def open(self) -> None:
        settings = self._ctx.settings
        assert settings.database_url
        self.participants = await Participants.open(settings.database_url, pool_size=settings.db_pool_max)
        deps = SagaDeps(settings, self._ctx.pool, self.participants, self.orders, policy_of(settings),
                        self._ctx.faults, self._ctx.redis)
        self.design = make_design(settings.saga, deps)
        await self.design.open()

    async def close(self) -> None:
        if self.design is not None:
            await self.design.close()
        if self.participants is not None:
            await self.participants.close()

    @property
    def running(self) -> tuple[SagaDesign, Participants]:
        if self.design is None or self.participants is None:
            raise RuntimeError("the sagas service is not open")
        return self.design, self.participants

    def resumed(self) -> float:
        return float(getattr(self.design, "resumed", 0))


def install(ctx: ServiceContext) -> ServiceParts:
    service = SagaService(ctx)

    def routes() -> Routes:
        return Routes(hot=(sagas_router(service, ctx.need(IdempotentRequests)),),
                      rest=(dead_letter_router(lambda: ctx.redis, ctx.settings.redis_prefix, ctx.require_admin),))

    return ServiceParts(
        routes=routes,
        fault_points=FAULT_POINTS,
        metrics=(counter("saaslab_sagas_resumed_total", "Unfinished sagas resumed by recovery", service.resumed),),
        on_start=(service.open,),
        on_stop=(service.close,),
        state={"sagas": service},
    )
