"""Failover's service face: writes that follow the primary, and `GET /admin/topology`.

The writes go to the PostgreSQL members `SAASLAB_FAILOVER_MEMBERS` lists (the live run's cluster,
saaslab/live/failover.py), through a pool that finds the primary by itself, so the service rides
through a failover without a restart; without members, to the service's own database
(reference_impl/failover/writes.py). The writes have routes of their own rather than moving
/v1/projects onto the cluster: the tenant directory, the idempotency ledger and every other pattern's
tables would have to follow the primary too, and a failover drill would then test all of them at once.
"""

from __future__ import annotations

import contextlib
from functools import partial

from reference_impl.common.metrics import counter
from reference_impl.common.service import Routes, ServiceContext, ServiceParts
from reference_impl.failover.routes import topology_router, writes_router
from reference_impl.failover.writes import WriteLog, members_of, read_topology
from reference_impl.idempotency.http import IdempotentRequests

MIGRATIONS = ()
"""None in the main database: the writes' table lives on the members (WriteLog creates it where missing)."""


def install(ctx: ServiceContext) -> ServiceParts:
    members = members_of(ctx.settings)
    log = WriteLog(members)

    async def open_log() -> None:
        with contextlib.suppress(Exception):  # a cluster mid-switch at start: the first write creates it
            await log.write_table()

    def routes() -> Routes:
        return Routes(hot=(writes_router(log, ctx.need(IdempotentRequests)),),
                      rest=(topology_router(partial(read_topology, ctx.settings, ctx.redis, members),
                                            ctx.require_admin),))

    return ServiceParts(
        routes=routes,
        metrics=(counter("saaslab_failover_primary_searches_total",
                         "Times the service looked for the PostgreSQL primary among its members",
                         lambda: log.pool.searches),),
        on_start=(open_log,),
        on_stop=(log.close,),
        state={"failover_writes": log},
    )
