"""Sharding's service face: the shard servers' pools, tenant placement for tenancy's store, jobs and admin routes.

With `SAASLAB_SHARD_URLS` set, it provides `TenantShards` (reference_impl/common/service.py): tenancy's store
then sends each tenant's queries to its shard, with a pool per shard opened once in the lifespan. Without it,
nothing is provided and every tenant's rows stay in the main database, exactly as without this pattern: one
shard is today's database, and the lab's other patterns and benchmarks pay nothing for sharding being
registered. The control tables (`control.sql`) are migrated in the main database either way.
"""

from __future__ import annotations

from pathlib import Path

from reference_impl.common.metrics import counter, gauge
from reference_impl.common.service import Routes, ServiceContext, ServiceParts, TenantShards
from reference_impl.sharding.jobs import ShardJobs
from reference_impl.sharding.mover import FAULT_POINTS
from reference_impl.sharding.routes import admin_router
from reference_impl.sharding.shards import ShardSet, shard_urls

MIGRATIONS = (Path(__file__).parent / "control.sql",)


def install(ctx: ServiceContext) -> ServiceParts:
    if not shard_urls(ctx.settings):
        return ServiceParts(routes=lambda: Routes(rest=(admin_router(None, None, ctx.pool, ctx.require_admin),)),
                            fault_points=FAULT_POINTS)
    shards = ShardSet(ctx.settings, ctx.pool)
    jobs = ShardJobs(shards, ctx.faults)
    ctx.provide(TenantShards, shards)
    return ServiceParts(
        routes=lambda: Routes(rest=(admin_router(shards, jobs, ctx.pool, ctx.require_admin),)),
        fault_points=FAULT_POINTS,
        on_start=(shards.open, jobs.start),
        on_stop=(jobs.stop, shards.close),
        metrics=(
            gauge("saaslab_shards", "Shard servers this worker has a pool for", lambda: len(shards.servers)),
            counter("saaslab_shard_placement_lookups_total", "Placements read from the control database",
                    lambda: shards.lookups),
        ),
        state={"shards": shards, "shard_jobs": jobs},
    )
