"""The shard servers as the service sees them: a pool per shard, the placement of each tenant, and scatter-gather.

`ShardSet` is what sharding provides to tenancy's store as `TenantShards` (reference_impl/common/service.py).
Shards are the URLs of `SAASLAB_SHARD_URLS`, numbered from 0 in that order; each holds tenancy's tables
(reference_impl/tenancy/schema.sql, read as a file: sharding does not import tenancy's code) and `shard.sql`.
The first `SAASLAB_SHARDS` are active at the first start; the rest are spares that an isolation or an added
shard takes into use. The control database (the main one) holds the directory, the membership and the jobs
(`control.sql`).

A tenant's placement: its row in `shard_directory` if it has one, else the router of `SAASLAB_SHARD_ROUTER`
over the membership (reference_impl/sharding/core.py, `make_router`). Under the `directory` router a tenant
without a row gets one at its first lookup, on the member shard with the fewest tenants (`_place_new`), so
new tenants even out across shards, including one added since; the hash fallback only keeps the tenants it
placed before. Placements are cached per worker for
`CACHE_LEASE_S` at most, and a placement at a move's cutover (`fenced`) is never cached: the mover flips
a tenant only once `CACHE_LEASE_S` has passed since its fence, so by then no worker routes the tenant by a
placement read before the fence, and a read after an acknowledged write on the new shard never goes to the
old one (reads are not fenced; this lease is what keeps them right).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from reference_impl.common.db import PipelinedReads, Pool, migrate
from reference_impl.common.problem import unavailable
from reference_impl.common.service import ShardRoute
from reference_impl.sharding.core import DirectoryRouter, Placement, make_router
from saaslab.settings import Settings

T = TypeVar("T")
HERE = Path(__file__).parent
TENANCY_SCHEMA = HERE.parent / "tenancy" / "schema.sql"
SHARD_MIGRATIONS = (TENANCY_SCHEMA, HERE / "shard.sql")
FENCE_SQLSTATE = "SH001"
CACHE_LEASE_S = 0.2
REFUSED_POLL_S = 0.01
_first_refusal: contextvars.ContextVar[float | None] = contextvars.ContextVar("first_refusal", default=None)


def shard_urls(settings: Settings) -> list[str]:
    return [u.strip() for u in settings.shard_urls.split(",") if u.strip()]


def is_fence_refusal(error: BaseException) -> bool:
    return isinstance(error, asyncpg.PostgresError) and getattr(error, "sqlstate", None) == FENCE_SQLSTATE


@dataclass
class ShardServer:
    shard: int
    url: str
    pool: Pool
    reads: PipelinedReads

    def route(self, placement: Placement) -> ShardRoute:
        return ShardRoute(self.shard, placement.epoch, self.pool, self.reads)


@dataclass(frozen=True, slots=True)
class Gathered:
    """One shard's answer to a scatter-gather query: `value`, or why there is none."""

    shard: int
    value: Any = None
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.error is None


class ShardSet:
    """Every shard's pool (opened once, in the lifespan), placements, and queries across shards."""

    def __init__(self, settings: Settings, control: Pool) -> None:
        urls = shard_urls(settings)
        if not urls:
            raise ValueError("ShardSet needs SAASLAB_SHARD_URLS")
        self.settings = settings
        self.control = control
        self.scheme = settings.shard_router
        self.servers = {i: self._server(i, url) for i, url in enumerate(urls)}
        self.initial = tuple(range(min(settings.shards, len(urls))))
        self._cache: dict[str, tuple[ShardRoute, float]] = {}
        self._loading: dict[str, asyncio.Task[ShardRoute]] = {}
        self._router: tuple[DirectoryRouter, float] | None = None
        self.load: Counter[str] = Counter()
        """Requests routed per tenant by this worker: the rebalancer's measure of load."""
        self.lookups = 0

    def _server(self, shard: int, url: str) -> ShardServer:
        pool = Pool(url, min_size=1, max_size=self.settings.shard_pool_max)
        return ShardServer(shard, url, pool, PipelinedReads(pool))

    # -- life cycle -------------------------------------------------------------------------------------
    async def open(self) -> None:
        await asyncio.gather(*(s.pool.open(timeout_s=30.0) for s in self.servers.values()))
        for s in self.servers.values():
            await migrate(s.pool, SHARD_MIGRATIONS)
        async with self.control.connection() as conn, conn.transaction():
            await conn.execute("INSERT INTO shard_membership (id, shards, initial) VALUES (1, $1, $1)"
                               " ON CONFLICT (id) DO NOTHING", list(self.initial))
            for shard in self.servers:
                await conn.execute("INSERT INTO shard_servers (shard, state) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                                   shard, "active" if shard in self.initial else "new")

    async def close(self) -> None:
        await asyncio.gather(*(s.pool.close() for s in self.servers.values()))

    # -- placement (TenantShards) -----------------------------------------------------------------------
    def cached(self, tenant_id: str) -> ShardRoute | None:
        entry = self._cache.get(tenant_id)
        if entry is None or entry[1] < time.monotonic():
            return None
        self.load[tenant_id] += 1
        return entry[0]

    async def route(self, tenant_id: str) -> ShardRoute:
        self.load[tenant_id] += 1
        loading = self._loading.get(tenant_id)
        if loading is None:
            loading = self._loading[tenant_id] = asyncio.ensure_future(self._load(tenant_id))
            loading.add_done_callback(lambda done: self._loading.pop(tenant_id, None)
                                      if self._loading.get(tenant_id) is done else None)
        return await asyncio.shield(loading)

    async def _load(self, tenant_id: str) -> ShardRoute:
        placement, fenced = await self.placement(tenant_id)
        route = self.servers[placement.shard].route(placement)
        if not fenced:
            self._cache[tenant_id] = (route, time.monotonic() + CACHE_LEASE_S)
        return route

    async def refused(self, tenant_id: str, error: BaseException) -> bool:
        """A write refused at the fence: drop the placement and wait a moment for the flip; after
        `shard_fence_wait_s` of refusals, answer 503 with Retry-After (the write did not happen)."""
        if not is_fence_refusal(error):
            return False
        self.invalidate(tenant_id)
        now = time.monotonic()
        first = _first_refusal.get()
        if first is None:
            _first_refusal.set(now)
        elif now - first > self.settings.shard_fence_wait_s:
            _first_refusal.set(None)
            raise unavailable(f"tenant {tenant_id} is moving between shards; its writes are fenced. Retry shortly.")
        await asyncio.sleep(REFUSED_POLL_S)
        return True

    def invalidate(self, tenant_id: str) -> None:
        self._cache.pop(tenant_id, None)

    async def router(self) -> DirectoryRouter:
        """The router over the current membership (re-read after `CACHE_LEASE_S`)."""
        if self._router is not None and self._router[1] >= time.monotonic():
            return self._router[0]
        async with self.control.connection() as conn:
            row = await conn.fetchrow("SELECT shards, initial FROM shard_membership WHERE id = 1")
        shards, initial = (list(row["shards"]), list(row["initial"])) if row else (list(self.initial),) * 2
        router = make_router(self.scheme, initial, vnodes=self.settings.shard_vnodes).with_shards(
            [*initial, *(s for s in shards if s not in initial)])
        self._router = (router, time.monotonic() + CACHE_LEASE_S)
        return router

    def forget_router(self) -> None:
        self._router = None

    async def placement(self, tenant_id: str) -> tuple[Placement, bool]:
        """The tenant's placement now (uncached) and whether it is fenced (at a move's cutover)."""
        self.lookups += 1
        async with self.control.connection() as conn:
            row = await conn.fetchrow("SELECT shard, epoch, fenced FROM shard_directory WHERE tenant_id = $1",
                                      tenant_id)
        if row is not None:
            return Placement(row["shard"], row["epoch"]), row["fenced"]
        if self.scheme == "directory":
            return await self._place_new(tenant_id)
        return Placement((await self.router()).shard_for(tenant_id), 0), False

    async def _place_new(self, tenant_id: str) -> tuple[Placement, bool]:
        """Under the directory, a tenant seen for the first time goes to the member shard holding the fewest
        tenants, and the directory records it (the first worker to record it wins). A tenant that already has
        rows on its hash shard (placed by the fallback before the directory placed every tenant) stays there."""
        router = await self.router()
        fallback = router.shard_for(tenant_id)
        async with self.servers[fallback].pool.connection() as conn:
            has_rows = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM projects WHERE tenant_id = $1)"
                                           " OR EXISTS (SELECT 1 FROM payments WHERE tenant_id = $1)", tenant_id)
        async with self.control.connection() as conn:
            shard = fallback
            if not has_rows:
                placed = dict(await conn.fetch("SELECT shard, count(*) FROM shard_directory WHERE shard = ANY($1)"
                                               " GROUP BY shard", list(router.shards)))
                shard = min(router.shards, key=lambda s: (placed.get(s, 0), s))
            row = await conn.fetchrow("INSERT INTO shard_directory (tenant_id, shard, epoch, fenced)"
                                      " VALUES ($1, $2, 0, false) ON CONFLICT (tenant_id) DO NOTHING"
                                      " RETURNING shard, epoch, fenced", tenant_id, shard)
            if row is None:
                row = await conn.fetchrow("SELECT shard, epoch, fenced FROM shard_directory WHERE tenant_id = $1",
                                          tenant_id)
        return Placement(row["shard"], row["epoch"]), row["fenced"]

    # -- across shards ----------------------------------------------------------------------------------
    async def gather(self, query: Callable[[asyncpg.Connection], Awaitable[T]], *,
                     shards: Sequence[int] | None = None, timeout_s: float | None = None) -> list[Gathered]:
        """`query` on every shard at once; a shard that fails or takes longer than `timeout_s`
        (`SAASLAB_SHARD_QUERY_TIMEOUT_S`) is answered without, saying why."""
        timeout = timeout_s if timeout_s is not None else self.settings.shard_query_timeout_s

        async def one(shard: int) -> Gathered:
            try:
                async with asyncio.timeout(timeout):
                    async with self.servers[shard].pool.connection() as conn:
                        return Gathered(shard, await query(conn))
            except TimeoutError:
                return Gathered(shard, error=f"no answer within {timeout:g} s")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                return Gathered(shard, error=f"{type(e).__name__}: {e}"[:200])

        return list(await asyncio.gather(*(one(s) for s in (shards if shards is not None else self.servers))))
