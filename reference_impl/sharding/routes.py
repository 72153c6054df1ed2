"""docs/contract.md "Sharding": the admin routes over the shards, placements and jobs.

With no shard URLs configured the service has one shard, the main database: the routes answer for it,
and a move, an isolation or an added shard is refused (409) saying what to configure.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from reference_impl.common.db import Pool
from reference_impl.common.problem import PROBLEM_RESPONSES, Problem, not_found
from reference_impl.common.routing import json_response
from reference_impl.sharding.jobs import ShardJobs
from reference_impl.sharding.shards import ShardSet

SHARD_SUMMARY = ("SELECT count(DISTINCT tenant_id), count(*) FROM (SELECT tenant_id FROM projects UNION ALL"
                 " SELECT tenant_id FROM payments) r")
ONE_DATABASE = ("The service runs on one database (no SAASLAB_SHARD_URLS): there is nowhere to move a tenant. "
                "List the shard servers' URLs in SAASLAB_SHARD_URLS.")


class MoveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: int


class AddShardIn(BaseModel):
    model_config = ConfigDict(extra="forbid")


def admin_router(shards: ShardSet | None, jobs: ShardJobs | None, control: Pool,
                 require_admin: Callable[..., Awaitable[None]]) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                       responses=PROBLEM_RESPONSES)

    def sharded() -> tuple[ShardSet, ShardJobs]:
        if shards is None or jobs is None:
            raise Problem(409, "not-sharded", ONE_DATABASE)
        return shards, jobs

    @router.get("/shards")
    async def list_shards() -> Response:
        """Every shard's tenants and rows, asked of all shards at once; a shard that does not answer within
        SAASLAB_SHARD_QUERY_TIMEOUT_S is listed with `answered: false` and its error (a partial answer)."""
        if shards is None:
            async with control.connection() as conn:
                n_tenants, n_rows = await conn.fetchrow(SHARD_SUMMARY)
            return json_response([{"shard": 0, "tenants": n_tenants, "rows": n_rows, "state": "active",
                                   "answered": True}])
        async with control.connection() as conn:
            states = dict(await conn.fetch("SELECT shard, state FROM shard_servers"))
        answers = await shards.gather(lambda c: c.fetchrow(SHARD_SUMMARY))
        out: list[dict[str, Any]] = []
        for a in answers:
            item: dict[str, Any] = {"shard": a.shard, "tenants": None, "rows": None,
                                    "state": states.get(a.shard, "new"), "answered": a.answered}
            if a.answered:
                item["tenants"], item["rows"] = a.value[0], a.value[1]
            else:
                item["error"] = a.error
            out.append(item)
        return json_response(out)

    @router.get("/tenants/{tenant_id}/placement")
    async def placement(tenant_id: str) -> Response:
        try:
            uuid.UUID(tenant_id)
        except ValueError:
            raise not_found("tenant") from None
        async with control.connection() as conn:
            if await conn.fetchval("SELECT 1 FROM tenants WHERE id = $1", tenant_id) is None:
                raise not_found("tenant")
        if shards is None:
            return json_response({"tenant_id": tenant_id, "shard": 0, "epoch": 0})
        where, fenced = await shards.placement(tenant_id)
        return json_response({"tenant_id": tenant_id, "shard": where.shard, "epoch": where.epoch, "fenced": fenced})

    @router.post("/tenants/{tenant_id}/move", status_code=202)
    async def move(tenant_id: str, body: MoveIn) -> Response:
        _, running = sharded()
        return json_response({"job_id": await running.move(tenant_id, body.to)}, status_code=202)

    @router.post("/tenants/{tenant_id}/isolate", status_code=202)
    async def isolate(tenant_id: str) -> Response:
        _, running = sharded()
        return json_response({"job_id": await running.isolate(tenant_id)}, status_code=202)

    @router.post("/shards", status_code=202)
    async def add_shard(body: AddShardIn | None = None) -> Response:
        _, running = sharded()
        return json_response({"job_id": await running.add_shard()}, status_code=202)

    @router.get("/jobs/{job_id}")
    async def job(job_id: str) -> Response:
        if jobs is None:
            raise not_found("job")
        return json_response(await jobs.get(job_id))

    return router
