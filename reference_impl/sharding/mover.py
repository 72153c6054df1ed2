"""The online tenant move against PostgreSQL shard servers, driven by core.py's step machine.

Change capture is trigger-based (shard.sql's `shard_guard`), not logical replication with a row filter:
triggers work on any PostgreSQL the service can reach as it is (logical replication needs
`wal_level=logical`, a restart, a publication per move, a subscription that connects shard to shard with
its own credentials, and replication slots to clean up after a failed move), the mover sees exactly
which changes it applied, and a tenant that is not moving costs one index probe per written row.

Steps (core.py, `advance`), `t` the tenant, `e` its epoch after the move:
* copy: the source starts capturing `t`'s writes (under a brief SHARE lock of the tables, so no write in
  flight misses the capture), then `t`'s rows are read in one snapshot and copied to the target.
* catch_up (rounds): the logged changes are applied to the target (upserts and deletes by id, in log
  order) and consumed from the log; rounds repeat until one applies at most `shard_fence_backlog`.
* fence: the directory marks `t` fenced at epoch `e` (its lookups stop being cached), then the source's
  state row for `t` becomes `fenced`: its UPDATE waits for `t`'s writes in flight, and later writes are
  refused with SQLSTATE SH001, which the service retries against the new placement.
* final_catch_up: what is left in the log.
* flip: once `CACHE_LEASE_S` has passed since the fence (no worker still routes `t` by an older lookup), the
  rows on both sides are counted and the directory says target, epoch `e`, unfenced.
* clean: `t`'s rows and log go from the source; its fenced state row stays, a tombstone that refuses a
  stale writer forever.

The unsafe mover skips the fence and the final catch-up and flips at once: writes that reach the source
after its last catch-up (or from a worker whose cached placement still says source) are deleted by clean.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from reference_impl.common.faults import Faults
from reference_impl.sharding.core import (
    Move,
    MovePolicy,
    MoveState,
    advance,
    fail_move,
    start_move,
    undo_steps,
)
from reference_impl.sharding.shards import CACHE_LEASE_S, ShardSet

TABLES = ("projects", "payments")
CUTOVER_POINT = "sharding.cutover"
FAULT_POINTS = {CUTOVER_POINT: "in a move, just before the directory flips to the target (a delay: a slow cutover, "
                               "during which the fenced mover holds the tenant's writes and the unsafe one lets them "
                               "land on the source; an error: the move fails and is undone)"}
MOVER_ON = "SET LOCAL saaslab.mover = 'on'"
LEASE_MARGIN_S = 0.02


def now_us() -> int:
    return time.monotonic_ns() // 1000


class Superseded(Exception):
    """The job running this move was taken over by another worker (this one looked dead): stop, undo nothing."""


class TenantMover:
    """Moves one tenant between shards; `run` drives the whole move and returns its final state, `resume` drives
    one that another worker started from the state it persisted (every step can be done again).

    `on_step` is awaited after every step with the new state (a job persists it there); raising `Superseded`
    from it stops the move without undoing anything, since the move is another worker's now. `owned` says
    whether the move is still this worker's: a failure undoes nothing once it is not."""

    def __init__(self, shards: ShardSet, faults: Faults, *, mover: str, policy: MovePolicy,
                 on_step: Callable[[MoveState], Any] | None = None,
                 owned: Callable[[], Awaitable[bool]] | None = None) -> None:
        self.shards = shards
        self.owned = owned
        self.faults = faults
        self.mover = mover
        self.policy = policy
        self.on_step = on_step
        self.source_rows: int | None = None
        self.target_rows: int | None = None
        self._fenced_at = 0.0

    async def run(self, tenant_id: str, target: int) -> MoveState:
        placement, _fenced = await self.shards.placement(tenant_id)
        state = start_move(Move(tenant_id, placement.shard, target), mover=self.mover,  # type: ignore[arg-type]
                           current_epoch=placement.epoch, now_us=now_us(), policy=self.policy)
        return await self._drive(state)

    async def resume(self, state: MoveState) -> MoveState:
        """Go on with a move from its persisted `state` (its `step` is the next to do, perhaps half done)."""
        if state.fenced_us is not None:
            # The fence went up in another process at a time this one cannot place: a whole lease from now.
            self._fenced_at = time.monotonic()
        return await self._drive(state)

    async def _drive(self, state: MoveState) -> MoveState:
        while not state.finished:
            try:
                rows = await getattr(self, f"_{state.step}")(state)
            except (Exception, asyncio.CancelledError) as e:
                state = fail_move(state, now_us(), f"{state.step}: {type(e).__name__}: {e}"[:500])
                await asyncio.shield(self._undo(state))
                if isinstance(e, asyncio.CancelledError):
                    raise
                break
            state = advance(state, now_us(), rows or 0)
            if self.on_step is not None:
                await self.on_step(state)  # Superseded goes up from here, before any further step
        return state

    # -- the steps ----------------------------------------------------------------------------------------
    def _pools(self, state: MoveState) -> tuple[Any, Any]:
        m = state.move
        return self.shards.servers[m.source].pool, self.shards.servers[m.target].pool

    async def _copy(self, state: MoveState) -> int:
        t, source, target = state.move.tenant_id, *self._pools(state)
        async with target.connection() as conn, conn.transaction():
            await conn.execute(MOVER_ON)
            await conn.execute("DELETE FROM shard_tenant_state WHERE tenant_id = $1", t)
            for table in TABLES:
                await conn.execute(f"DELETE FROM {table} WHERE tenant_id = $1", t)
        async with source.connection() as conn, conn.transaction():
            await conn.execute(f"LOCK TABLE {', '.join(TABLES)} IN SHARE MODE")
            await conn.execute("DELETE FROM shard_changes WHERE tenant_id = $1", t)
            await conn.execute("INSERT INTO shard_tenant_state (tenant_id, state, epoch) VALUES ($1, 'capturing', $2)"
                               " ON CONFLICT (tenant_id) DO UPDATE SET state = 'capturing', epoch = EXCLUDED.epoch",
                               t, state.epoch)
        async with source.connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = {table: await conn.fetch(f"SELECT * FROM {table} WHERE tenant_id = $1", t) for table in TABLES}
        copied = 0
        async with target.connection() as conn, conn.transaction():
            await conn.execute(MOVER_ON)
            for table, rows in snapshot.items():
                if rows:
                    await conn.copy_records_to_table(table, records=[tuple(r) for r in rows],
                                                     columns=list(rows[0].keys()))
                    copied += len(rows)
        return copied

    async def _catch_up(self, state: MoveState) -> int:
        t, source, target = state.move.tenant_id, *self._pools(state)
        async with source.connection() as conn:
            changes = await conn.fetch("SELECT seq, tbl, op, id, row::text AS row FROM shard_changes"
                                       " WHERE tenant_id = $1 ORDER BY seq", t)
        if not changes:
            return 0
        # The last change of each row wins: the rows touched are deleted, and those that still exist are
        # inserted as their last change left them (two statements per table, whatever the round's size).
        last: dict[str, dict[Any, Any]] = {table: {} for table in TABLES}
        for c in changes:
            if c["tbl"] not in last:
                raise ValueError(f"change of unknown table {c['tbl']!r}")
            last[c["tbl"]][c["id"]] = c["row"] if c["op"] != "DELETE" else None
        async with target.connection() as conn, conn.transaction():
            await conn.execute(MOVER_ON)
            for table, rows in last.items():
                if not rows:
                    continue
                await conn.execute(f"DELETE FROM {table} WHERE id = ANY($1::uuid[])", list(rows))
                alive = [r for r in rows.values() if r is not None]
                if alive:
                    await conn.execute(f"INSERT INTO {table} SELECT * FROM jsonb_populate_recordset(NULL::{table},"
                                       " $1::jsonb)", "[" + ",".join(alive) + "]")
        # Consumed by sequence number, not "everything below the last seen": a change with a lower number
        # may commit after a higher one was read, and is then applied by the next round.
        async with source.connection() as conn:
            await conn.execute("DELETE FROM shard_changes WHERE seq = ANY($1::bigint[])", [c["seq"] for c in changes])
        return len(changes)

    async def _fence(self, state: MoveState) -> int:
        t, source, _target = state.move.tenant_id, *self._pools(state)
        async with self.shards.control.connection() as conn:
            await conn.execute("INSERT INTO shard_directory (tenant_id, shard, epoch, fenced) VALUES ($1, $2, $3, true)"
                               " ON CONFLICT (tenant_id) DO UPDATE SET epoch = EXCLUDED.epoch, fenced = true",
                               t, state.move.source, state.epoch)
        self.shards.invalidate(t)
        async with source.connection() as conn:
            await conn.execute("UPDATE shard_tenant_state SET state = 'fenced', epoch = $2 WHERE tenant_id = $1",
                               t, state.epoch)
        self._fenced_at = time.monotonic()
        return 0

    async def _final_catch_up(self, state: MoveState) -> int:
        return await self._catch_up(state)

    async def _flip(self, state: MoveState) -> int:
        await self.faults.before(CUTOVER_POINT)
        if state.fenced_us is not None:
            wait = self._fenced_at + CACHE_LEASE_S + LEASE_MARGIN_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        t, source, target = state.move.tenant_id, *self._pools(state)
        # The rows on both sides as the directory flips: equal under the fence; under the unsafe mover, writes
        # that reached the source after its last catch-up make them differ (and are cleaned away next).
        self.source_rows, self.target_rows = [await _count(pool, t) for pool in (source, target)]
        async with self.shards.control.connection() as conn:
            await conn.execute("INSERT INTO shard_directory (tenant_id, shard, epoch, fenced) VALUES ($1, $2, $3, false)"
                               " ON CONFLICT (tenant_id) DO UPDATE SET shard = $2, epoch = $3, fenced = false",
                               t, state.move.target, state.epoch)
        self.shards.invalidate(t)
        return 0

    async def _clean(self, state: MoveState) -> int:
        t, source, _target = state.move.tenant_id, *self._pools(state)
        async with source.connection() as conn, conn.transaction():
            await conn.execute(MOVER_ON)
            for table in TABLES:
                await conn.execute(f"DELETE FROM {table} WHERE tenant_id = $1", t)
            await conn.execute("DELETE FROM shard_changes WHERE tenant_id = $1", t)
            if state.fenced_us is None:  # the unsafe mover leaves no tombstone: the source takes writes again
                await conn.execute("DELETE FROM shard_tenant_state WHERE tenant_id = $1", t)
        return 0

    async def _undo(self, state: MoveState) -> None:
        """Before the flip the source still owns the tenant: drop the target's copy, stop capturing, lift the fence."""
        steps = undo_steps(state)
        if not steps:
            return
        if self.owned is not None:
            try:
                if not await self.owned():
                    return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return  # the control database cannot say: leave the move as it is for recovery to finish
        t, source, target = state.move.tenant_id, *self._pools(state)
        try:
            async with target.connection() as conn, conn.transaction():
                await conn.execute(MOVER_ON)
                for table in TABLES:
                    await conn.execute(f"DELETE FROM {table} WHERE tenant_id = $1", t)
            async with source.connection() as conn, conn.transaction():
                await conn.execute("DELETE FROM shard_tenant_state WHERE tenant_id = $1", t)
                await conn.execute("DELETE FROM shard_changes WHERE tenant_id = $1", t)
            if "unfence_source" in steps:
                async with self.shards.control.connection() as conn:
                    await conn.execute("UPDATE shard_directory SET fenced = false WHERE tenant_id = $1", t)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass  # a shard that is down: the job's error already says the move failed; the fence stays up


async def _count(pool: Any, tenant_id: str) -> int:
    async with pool.connection() as conn:
        return sum([await conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", tenant_id)
                    for table in TABLES])
