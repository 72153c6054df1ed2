"""Moves, isolations and added shards as jobs: started by the admin routes, run in the background, kept in
the control database's `shard_jobs` (GET /admin/jobs/{id}).

* move: one tenant to a shard the admin names.
* isolate: one tenant alone onto a spare shard (Citus's `isolate_tenant_to_new_shard`); the spare becomes
  active but never joins the hash routers' membership, so no other tenant follows it there.
* add_shard: a spare becomes active. Under the directory it joins the membership and the rebalancer moves
  tenants onto it by load (`rebalance_plan`: requests this worker routed per tenant, rows where it saw
  none); under a hash router the tenants whose hash changes with the new membership move onto it
  (`reshard_plan`), then the membership changes. Both through the same mover, one tenant at a time.

A job runs in the worker that accepted it; a worker that dies leaves its job `running` (and a move it
interrupted before the flip with its fence up: see `TenantMover._undo` for what a failure undoes).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from reference_impl.common.faults import Faults
from reference_impl.common.problem import Problem, not_found
from reference_impl.sharding.core import (
    Move,
    MovePolicy,
    MoveState,
    rebalance_plan,
    reshard_plan,
)
from reference_impl.sharding.mover import TenantMover
from reference_impl.sharding.shards import ShardSet


def conflict(detail: str) -> Problem:
    return Problem(409, "conflict", detail)


class ShardJobs:
    def __init__(self, shards: ShardSet, faults: Faults) -> None:
        self.shards = shards
        self.faults = faults
        self.settings = shards.settings
        self._tasks: set[asyncio.Task[None]] = set()
        self.last_moves: list[dict[str, Any]] = []
        """The moves of the jobs this worker ran, as the checker reads them (source and target rows)."""

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the routes' operations -------------------------------------------------------------------------
    async def move(self, tenant_id: str, target: int) -> str:
        await self._known_tenant(tenant_id)
        if target not in self.shards.servers:
            raise Problem(422, "unknown-shard", f"No shard {target}; shards: {', '.join(map(str, self.shards.servers))}.")
        placement, _ = await self.shards.placement(tenant_id)
        if placement.shard == target:
            raise conflict(f"The tenant is on shard {target} already.")
        await self._not_moving(tenant_id)
        async with self.shards.control.connection() as conn:
            await conn.execute("UPDATE shard_servers SET state = 'active' WHERE shard = $1", target)

        async def work(job: str) -> dict[str, Any]:
            return await self._run_moves(job, [Move(tenant_id, placement.shard, target)])

        return await self._start("move", {"tenant": tenant_id, "to": target}, work)

    async def isolate(self, tenant_id: str) -> str:
        await self._known_tenant(tenant_id)
        await self._not_moving(tenant_id)
        spare = await self._take_spare()
        placement, _ = await self.shards.placement(tenant_id)

        async def work(job: str) -> dict[str, Any]:
            return await self._run_moves(job, [Move(tenant_id, placement.shard, spare)])

        return await self._start("isolate", {"tenant": tenant_id, "to": spare}, work)

    async def add_shard(self) -> str:
        spare = await self._take_spare()

        async def work(job: str) -> dict[str, Any]:
            before = await self.shards.router()
            members = [*before.shards, spare]
            tenants, rows = await self._tenants_and_rows()
            if self.shards.scheme == "directory":
                await self._set_membership(members)
                after = await self.shards.router()
                placed = {t: (await self.shards.placement(t))[0].shard for t in tenants}
                # Isolated tenants sit on shards outside the membership: they stay where they are.
                loads = {t: float(self.shards.load.get(t, 0) or rows.get(t, 0)) for t in tenants
                         if placed[t] in after.shards}
                moves = rebalance_plan(_Placed(after.shards, placed), loads, rows=rows)
                return await self._run_moves(job, moves)
            moves = reshard_plan(before, before.with_shards(members), tenants, rows)
            done = await self._run_moves(job, moves)
            await self._set_membership(members)
            return done

        return await self._start("add_shard", {"shard": spare}, work)

    async def get(self, job_id: str) -> dict[str, Any]:
        try:
            uuid.UUID(job_id)
        except ValueError:
            raise not_found("job") from None
        async with self.shards.control.connection() as conn:
            row = await conn.fetchrow("SELECT id::text, kind, state, detail::text, copied_rows, write_blocked_ms, error"
                                      " FROM shard_jobs WHERE id = $1", job_id)
        if row is None:
            raise not_found("job")
        return {"job_id": row["id"], "kind": row["kind"], "state": row["state"], "copied_rows": row["copied_rows"],
                "write_blocked_ms": row["write_blocked_ms"], "error": row["error"], **json.loads(row["detail"])}

    # -- running ----------------------------------------------------------------------------------------
    async def _start(self, kind: str, detail: dict[str, Any], work: Callable[[str], Awaitable[dict[str, Any]]]) -> str:
        job = str(uuid.uuid4())
        async with self.shards.control.connection() as conn:
            await conn.execute("INSERT INTO shard_jobs (id, kind, state, detail) VALUES ($1, $2, 'running', $3::jsonb)",
                               job, kind, json.dumps(detail))

        async def run() -> None:
            try:
                result = await work(job)
                error = result.pop("error", None)
                await self._finish(job, "failed" if error else "done", result, error)
            except asyncio.CancelledError:
                await asyncio.shield(self._finish(job, "failed", {}, "the service stopped during the job"))
                raise
            except Exception as e:  # the job's outcome is its row: whatever failed is written there
                await self._finish(job, "failed", {}, f"{type(e).__name__}: {e}"[:500])

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _finish(self, job: str, state: str, result: dict[str, Any], error: str | None) -> None:
        async with self.shards.control.connection() as conn:
            await conn.execute("UPDATE shard_jobs SET state = $2, error = $3, finished_at = clock_timestamp(),"
                               " detail = detail || $4::jsonb WHERE id = $1", job, state, error,
                               json.dumps({k: v for k, v in result.items() if k not in ("copied_rows",
                                                                                          "write_blocked_ms")}))

    async def _run_moves(self, job: str, moves: list[Move]) -> dict[str, Any]:
        copied, blocked_ms, reports = 0, 0.0, []
        policy = MovePolicy(fence_backlog=self.settings.shard_fence_backlog)

        async def progress(state: MoveState) -> None:
            async with self.shards.control.connection() as conn:
                await conn.execute("UPDATE shard_jobs SET copied_rows = $2, write_blocked_ms = $3 WHERE id = $1", job,
                                   copied + state.copied_rows + state.caught_up_rows,
                                   max(blocked_ms, state.write_blocked_us / 1000))

        for m in moves:
            mover = TenantMover(self.shards, self.faults, mover=self.settings.shard_mover, policy=policy, on_step=progress)
            state = await mover.run(m.tenant_id, m.target)
            copied += state.copied_rows + state.caught_up_rows
            blocked_ms = max(blocked_ms, state.write_blocked_us / 1000)
            report = {"tenant": m.tenant_id, "source": m.source, "target": m.target, "epoch": state.epoch,
                      "copied_rows": state.copied_rows, "caught_up_rows": state.caught_up_rows,
                      "write_blocked_ms": state.write_blocked_us / 1000, "state": state.step,
                      "duration_ms": ((state.finished_us or state.started_us) - state.started_us) / 1000,
                      "source_rows": mover.source_rows, "target_rows": mover.target_rows}
            reports.append(report)
            self.last_moves.append(report)
            if state.step == "failed":
                return {"moves": reports, "error": state.error}
        async with self.shards.control.connection() as conn:
            await conn.execute("UPDATE shard_jobs SET copied_rows = $2, write_blocked_ms = $3 WHERE id = $1",
                               job, copied, blocked_ms)
        return {"moves": reports}

    # -- helpers ----------------------------------------------------------------------------------------
    async def _known_tenant(self, tenant_id: str) -> None:
        try:
            uuid.UUID(tenant_id)
        except ValueError:
            raise not_found("tenant") from None
        async with self.shards.control.connection() as conn:
            if await conn.fetchval("SELECT 1 FROM tenants WHERE id = $1", tenant_id) is None:
                raise not_found("tenant")

    async def _not_moving(self, tenant_id: str) -> None:
        async with self.shards.control.connection() as conn:
            running = await conn.fetchval("SELECT id::text FROM shard_jobs WHERE state = 'running' AND"
                                          " (detail->>'tenant' = $1 OR kind = 'add_shard') LIMIT 1", tenant_id)
        if running is not None:
            raise conflict(f"Job {running} is moving tenants; wait for it (GET /admin/jobs/{running}).")

    async def _take_spare(self) -> int:
        async with self.shards.control.connection() as conn:
            spare = await conn.fetchval("UPDATE shard_servers SET state = 'active' WHERE shard ="
                                        " (SELECT min(shard) FROM shard_servers WHERE state = 'new') RETURNING shard")
        if spare is None:
            raise conflict("No spare shard server: list one more URL in SAASLAB_SHARD_URLS than SAASLAB_SHARDS.")
        return int(spare)

    async def _set_membership(self, members: list[int]) -> None:
        async with self.shards.control.connection() as conn:
            await conn.execute("UPDATE shard_membership SET shards = $1, version = version + 1 WHERE id = 1", members)
        self.shards.forget_router()

    async def _tenants_and_rows(self) -> tuple[list[str], dict[str, int]]:
        async with self.shards.control.connection() as conn:
            tenants = [r[0] for r in await conn.fetch("SELECT id::text FROM tenants ORDER BY id")]
        rows: dict[str, int] = {}
        for answer in await self.shards.gather(lambda c: c.fetch(
                "SELECT tenant_id::text, count(*) FROM (SELECT tenant_id FROM projects UNION ALL"
                " SELECT tenant_id FROM payments) r GROUP BY tenant_id")):
            for tenant, n in answer.value or ():
                rows[tenant] = rows.get(tenant, 0) + n
        return tenants, rows


class _Placed:
    """A router made of placements already looked up (the rebalancer's view of the directory)."""

    scheme = "directory"

    def __init__(self, shards: tuple[int, ...], placed: dict[str, int]) -> None:
        self.shards = shards
        self._placed = placed

    def shard_for(self, tenant_id: str) -> int:
        return self._placed[tenant_id]

    def with_shards(self, shards: Any) -> _Placed:
        return _Placed(tuple(shards), self._placed)
