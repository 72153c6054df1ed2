"""Tenancy's service face: the tenant directory, the isolation store, the scheduler gate and their routes.

Provides the app's `TenantResolver` (its tenant-auth middleware resolves API keys with the
directory) and the `PaymentSink` idempotency publishes recorded payments to (the store's payments
table). Its /v1 routes run every POST through idempotency's `IdempotentRequests`, which they need
from the context when the routers are built (reference_impl/common/service.py). When the sharding
pattern provides `TenantShards` (shards configured), the store routes each tenant's queries to its shard.
"""

from __future__ import annotations

from pathlib import Path

from reference_impl.common.auth import TenantResolver
from reference_impl.common.metrics import counter, gauge
from reference_impl.common.service import PaymentSink, Routes, ServiceContext, ServiceParts, TenantShards
from reference_impl.idempotency.http import IdempotentRequests
from reference_impl.tenancy.gate import Gate
from reference_impl.tenancy.repository import FAULT_POINTS, TenantDirectory, make_store, publisher
from reference_impl.tenancy.routes import admin_router, tenant_router

MIGRATIONS = (Path(__file__).parent / "schema.sql",)


def install(ctx: ServiceContext) -> ServiceParts:
    gate = Gate.from_settings(ctx.settings)
    directory = TenantDirectory(ctx.pool)
    store = make_store(ctx.settings.isolation, ctx.pool, ctx.faults)
    ctx.provide(TenantResolver, directory)
    ctx.provide(PaymentSink, publisher(store))

    def routes() -> Routes:
        # Sharding, when shards are configured, is installed after tenancy: its router is known only now.
        store.use_shards(ctx.find(TenantShards))
        return Routes(hot=(tenant_router(store, gate, ctx.faults, ctx.need(IdempotentRequests)),),
                      rest=(admin_router(directory, store, ctx.require_admin),))

    return ServiceParts(
        routes=routes,
        fault_points=FAULT_POINTS,
        metrics=(
            gauge("saaslab_scheduler_slots", "Request slots the scheduler hands out", lambda: gate.scheduler.slots),
            gauge("saaslab_scheduler_busy_slots", "Slots held by running requests", lambda: gate.busy),
            gauge("saaslab_scheduler_queued_requests", "Requests waiting for a slot", gate.queued),
            counter("saaslab_scheduler_waits_total", "Requests that found no free slot and queued",
                    lambda: gate.waits),
            counter("saaslab_scheduler_wait_seconds", "Time granted requests spent queued for a slot, summed",
                    lambda: gate.wait_seconds),
            counter("saaslab_scheduler_holds", "Slots given back", lambda: gate.holds),
            counter("saaslab_scheduler_hold_seconds", "Slot holds, grant to release, summed",
                    lambda: gate.hold_seconds),
            counter("saaslab_scheduler_hold_seconds_squared", "Squares of the slot holds in seconds, summed",
                    lambda: gate.hold_seconds_squared),
        ),
        state={"gate": gate, "store": store},
    )
