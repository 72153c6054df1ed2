"""Moves, isolations and added shards as jobs: started by the admin routes, run in the background, kept in
the control database's `shard_jobs` (GET /admin/jobs/{id}).

* move: one tenant to a shard the admin names.
* isolate: one tenant alone onto a spare shard (Citus's `isolate_tenant_to_new_shard`); the spare becomes
  active but never joins the hash routers' membership, so no other tenant follows it there.
* add_shard: a spare becomes active. Under the directory it joins the membership and the rebalancer moves
  tenants onto it by load (`rebalance_plan`: requests this worker routed per tenant, rows where it saw
  none); under a hash router the tenants whose hash changes with the new membership move onto it
  (`reshard_plan`), then the membership changes. Both through the same mover, one tenant at a time.

A job is its row: its plan (the moves), the moves done, and the move in progress as core.py's `MoveState`
after its last step (`detail`), written after every step. The worker running a job owns it (`owner`) and
renews `heartbeat_at` every `JOB_HEARTBEAT_S`; every worker looks every `JOB_LEASE_S` (and at start) for
running jobs whose heartbeat is older than that, takes them over and resumes them from their persisted state
(the mover's steps can all be done again; a resumed move that fails is undone as any other). So a worker that
dies mid-move leaves neither a job `running` for ever nor a tenant's writes fenced. A worker that finds its
job taken over (it was only slow) stops at its next step and writes nothing more of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import asyncpg

from reference_impl.common.faults import Faults
from reference_impl.common.problem import Problem, not_found
from reference_impl.sharding.core import (
    Move,
    MovePolicy,
    MoveState,
    rebalance_plan,
    reshard_plan,
    state_from_dict,
    state_to_dict,
)
from reference_impl.sharding.mover import Superseded, TenantMover
from reference_impl.sharding.shards import ShardSet

JOB_HEARTBEAT_S = 1.0
JOB_LEASE_S = 5.0
SCHEMA_ISOLATION = ("Tenants are isolated by schema (SAASLAB_ISOLATION=schema): the mover copies the shared "
                    "tables, so a tenant's own schema would stay behind. Run the service with "
                    "SAASLAB_ISOLATION=filtered or rls to move tenants between shards.")


def conflict(detail: str) -> Problem:
    return Problem(409, "conflict", detail)


class ShardJobs:
    def __init__(self, shards: ShardSet, faults: Faults) -> None:
        self.shards = shards
        self.faults = faults
        self.settings = shards.settings
        self.worker = uuid.uuid4().hex
        """This worker's name as the owner of the jobs it runs."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeats: dict[str, asyncio.Task[None]] = {}
        self._recovery: asyncio.Task[None] | None = None
        self.last_moves: list[dict[str, Any]] = []
        """The moves of the jobs this worker ran, as the checker reads them (source and target rows)."""

    async def start(self) -> None:
        """Take over the jobs of workers that died (now, and every `JOB_LEASE_S` from now on)."""
        self._recovery = asyncio.create_task(self._recover_forever())

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._recovery] if self._recovery else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the routes' operations -------------------------------------------------------------------------
    async def move(self, tenant_id: str, target: int) -> str:
        self._movable()
        await self._known_tenant(tenant_id)
        if target not in self.shards.servers:
            raise Problem(422, "unknown-shard", f"No shard {target}; shards: {', '.join(map(str, self.shards.servers))}.")
        placement, _ = await self.shards.placement(tenant_id)
        if placement.shard == target:
            raise conflict(f"The tenant is on shard {target} already.")
        await self._not_moving(tenant_id)
        async with self.shards.control.connection() as conn:
            await conn.execute("UPDATE shard_servers SET state = 'active' WHERE shard = $1", target)
        return await self._start("move", {"tenant": tenant_id, "to": target}, [Move(tenant_id, placement.shard, target)])

    async def isolate(self, tenant_id: str) -> str:
        self._movable()
        await self._known_tenant(tenant_id)
        await self._not_moving(tenant_id)
        spare = await self._take_spare()
        placement, _ = await self.shards.placement(tenant_id)
        return await self._start("isolate", {"tenant": tenant_id, "to": spare}, [Move(tenant_id, placement.shard, spare)])

    async def add_shard(self) -> str:
        self._movable()
        spare = await self._take_spare()
        return await self._start("add_shard", {"shard": spare}, None)

    async def _plan_add_shard(self, spare: int) -> tuple[list[Move], list[int] | None]:
        """The moves that fill `spare`, and the membership to set once they are done (None: set already)."""
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
            return rebalance_plan(_Placed(after.shards, placed), loads, rows=rows), None
        return reshard_plan(before, before.with_shards(members), tenants, rows), members

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
        detail = json.loads(row["detail"])
        current = detail.pop("current", None)
        detail.pop("plan", None)
        detail["moves"] = detail.pop("done", [])
        if current is not None:
            detail["step"] = current["step"]
        return {"job_id": row["id"], "kind": row["kind"], "state": row["state"], "copied_rows": row["copied_rows"],
                "write_blocked_ms": row["write_blocked_ms"], "error": row["error"], **detail}

    # -- running ----------------------------------------------------------------------------------------
    async def _start(self, kind: str, detail: dict[str, Any], plan: list[Move] | None) -> str:
        job = str(uuid.uuid4())
        if plan is not None:
            detail = {**detail, "plan": [_move_json(m) for m in plan]}
        async with self.shards.control.connection() as conn:
            await conn.execute("INSERT INTO shard_jobs (id, kind, state, detail, owner, heartbeat_at)"
                               " VALUES ($1, $2, 'running', $3::jsonb, $4, clock_timestamp())",
                               job, kind, json.dumps(detail), self.worker)
        self._spawn(job, kind, detail)
        return job

    def _spawn(self, job: str, kind: str, detail: dict[str, Any]) -> None:
        task = asyncio.create_task(self._run(job, kind, detail))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: str, kind: str, detail: dict[str, Any]) -> None:
        heartbeat = self._heartbeats[job] = asyncio.create_task(self._heartbeat(job))
        try:
            if "plan" in detail:
                plan = [Move(**m) for m in detail["plan"]]
                members = detail.get("members")
            elif kind == "add_shard":
                plan, members = await self._plan_add_shard(int(detail["shard"]))
                await self._save(job, {"plan": [_move_json(m) for m in plan], "members": members})
            else:
                raise ValueError(f"job {job} has no plan")
            result = await self._run_moves(job, plan, detail.get("done", []), detail.get("current"))
            error = result.pop("error", None)
            if error is None and members:
                await self._set_membership(members)
            await self._finish(job, "failed" if error else "done", error)
        except Superseded:
            pass  # another worker took the job over: it is theirs to finish
        except asyncio.CancelledError:
            await asyncio.shield(self._finish(job, "failed", "the service stopped during the job"))
            raise
        except Exception as e:  # the job's outcome is its row: whatever failed is written there
            await self._finish(job, "failed", f"{type(e).__name__}: {e}"[:500])
        finally:
            heartbeat.cancel()
            self._heartbeats.pop(job, None)

    async def _heartbeat(self, job: str) -> None:
        while True:
            await asyncio.sleep(JOB_HEARTBEAT_S)
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                async with self.shards.control.connection() as conn:
                    await conn.execute("UPDATE shard_jobs SET heartbeat_at = clock_timestamp()"
                                       " WHERE id = $1 AND owner = $2 AND state = 'running'", job, self.worker)

    async def _owns(self, job: str) -> bool:
        async with self.shards.control.connection() as conn:
            return await conn.fetchval("SELECT owner = $2 FROM shard_jobs WHERE id = $1", job, self.worker) is True

    async def _save(self, job: str, detail: dict[str, Any], copied: int | None = None,
                    blocked_ms: float | None = None) -> None:
        """Merge `detail` into the job's row, if the job is still this worker's; else `Superseded`."""
        async with self.shards.control.connection() as conn:
            updated = await conn.fetchval(
                "UPDATE shard_jobs SET detail = detail || $3::jsonb, copied_rows = coalesce($4, copied_rows),"
                " write_blocked_ms = coalesce($5, write_blocked_ms), heartbeat_at = clock_timestamp()"
                " WHERE id = $1 AND owner = $2 AND state = 'running' RETURNING 1",
                job, self.worker, json.dumps(detail), copied, blocked_ms)
        if updated is None:
            raise Superseded(job)

    async def _finish(self, job: str, state: str, error: str | None) -> None:
        async with self.shards.control.connection() as conn:
            await conn.execute("UPDATE shard_jobs SET state = $2, error = $3, finished_at = clock_timestamp(),"
                               " detail = detail - 'current' WHERE id = $1 AND owner = $4 AND state = 'running'",
                               job, state, error, self.worker)

    async def _run_moves(self, job: str, plan: list[Move], done: list[dict[str, Any]],
                         current: dict[str, Any] | None) -> dict[str, Any]:
        reports = list(done)
        copied = sum(r["copied_rows"] + r["caught_up_rows"] for r in reports)
        blocked_ms = max((r["write_blocked_ms"] for r in reports), default=0.0)
        policy = MovePolicy(fence_backlog=self.settings.shard_fence_backlog)

        async def progress(state: MoveState) -> None:
            await self._save(job, {"current": state_to_dict(state)}, copied + state.copied_rows + state.caught_up_rows,
                             max(blocked_ms, state.write_blocked_us / 1000))

        async def owned() -> bool:
            return await self._owns(job)

        for m in plan[len(reports):]:
            mover = TenantMover(self.shards, self.faults, mover=self.settings.shard_mover, policy=policy,
                                on_step=progress, owned=owned)
            if current is not None:
                state = await mover.resume(state_from_dict(current))
                current = None
            else:
                state = await mover.run(m.tenant_id, m.target)
            copied += state.copied_rows + state.caught_up_rows
            blocked_ms = max(blocked_ms, state.write_blocked_us / 1000)
            report = {"tenant": m.tenant_id, "source": state.move.source, "target": m.target, "epoch": state.epoch,
                      "copied_rows": state.copied_rows, "caught_up_rows": state.caught_up_rows,
                      "write_blocked_ms": state.write_blocked_us / 1000, "state": state.step,
                      "duration_ms": ((state.finished_us or state.started_us) - state.started_us) / 1000,
                      "source_rows": mover.source_rows, "target_rows": mover.target_rows}
            reports.append(report)
            self.last_moves.append(report)
            await self._save(job, {"done": reports, "current": None}, copied, blocked_ms)
            if state.step == "failed":
                return {"error": state.error}
        return {}

    # -- taking over the jobs of workers that died ------------------------------------------------------
    async def recover(self) -> list[str]:
        """Take over every running job whose owner has not renewed its heartbeat for `JOB_LEASE_S`, and resume
        it from its persisted state; returns their ids."""
        async with self.shards.control.connection() as conn:
            rows = await conn.fetch(
                "UPDATE shard_jobs SET owner = $1, heartbeat_at = clock_timestamp() WHERE state = 'running' AND"
                " (heartbeat_at IS NULL OR heartbeat_at < clock_timestamp() - make_interval(secs => $2))"
                " RETURNING id::text, kind, detail::text", self.worker, JOB_LEASE_S)
        taken = []
        for row in rows:
            detail = json.loads(row["detail"])
            if "plan" not in detail:
                # It died while planning an added shard: nothing moved yet (the spare may have joined, empty).
                await self._finish(row["id"], "failed", "the worker running the job stopped before it planned "
                                                        "its moves; nothing moved")
                continue
            self._spawn(row["id"], row["kind"], detail)
            taken.append(row["id"])
        return taken

    async def _recover_forever(self) -> None:
        while True:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self.recover()
            await asyncio.sleep(JOB_LEASE_S)

    # -- helpers ----------------------------------------------------------------------------------------
    def _movable(self) -> None:
        if self.settings.isolation == "schema":
            raise conflict(SCHEMA_ISOLATION)

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


def _move_json(m: Move) -> dict[str, Any]:
    return {"tenant_id": m.tenant_id, "source": m.source, "target": m.target, "rows": m.rows, "load": m.load}


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
