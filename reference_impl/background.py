"""The completer and the reaper as processes: what `saaslab completer` and `saaslab reaper` run.

Both work on the `postgres` design's `idempotency_keys` table, whatever `SAASLAB_IDEMPOTENCY` says
(with another design the table is empty, or holds what an earlier run left). Each opens its own
small pool, applies the service's migrations (idempotent; so it may start before the service),
and runs `run_once` (one pass, returning how many it handled) or `run_forever` until SIGINT or
SIGTERM. `completer_for(settings)` is the one place a completer is wired (its pool, the service's
policy and payment publisher): `saaslab completer` and the live harness (saaslab/live/idempotency.py)
both start theirs from it. The completer publishes the payments it finishes to the payments table
of the isolation design in `SAASLAB_ISOLATION`, exactly as the service would have: run it with the
service's settings; with `SAASLAB_SHARD_URLS` set, on each tenant's shard, as the service does.
Like app.py it composes patterns (idempotency's completer, tenancy's store), so it sits beside it,
above both.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass

from reference_impl.app import MIGRATIONS
from reference_impl.common.db import Pool, migrated_pool
from reference_impl.common.faults import Faults
from reference_impl.common.metrics import Metrics
from reference_impl.idempotency import completer, reaper
from reference_impl.idempotency.core import Policy
from reference_impl.idempotency.http import policy_of, wall_clock_us
from reference_impl.idempotency.ledger import Publish
from reference_impl.sharding.shards import ShardSet, shard_urls
from reference_impl.tenancy.repository import make_store, publisher
from saaslab.settings import Settings


def _pool(settings: Settings, *, migrate: bool = True) -> AbstractAsyncContextManager[Pool]:
    if not settings.database_url:
        raise ValueError("settings.database_url is not set")
    return migrated_pool(settings.database_url, MIGRATIONS if migrate else ())


async def _until_signalled(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with suppress(Exception):
                loop.remove_signal_handler(sig)


@dataclass(frozen=True)
class Completer:
    """A completer wired as the service with the same settings would be (`completer_for`)."""

    pool: Pool
    policy: Policy
    publish: Publish

    async def run_once(self, now_us: int | None = None) -> int:
        """One pass (`completer.run_once`) at `now_us` (default: now); returns how many it handled."""
        return await completer.run_once(self.pool, wall_clock_us() if now_us is None else now_us,
                                        policy=self.policy, publish=self.publish)

    async def run_forever(self, *, interval_s: float, stop: asyncio.Event) -> None:
        await completer.run_forever(self.pool, policy=self.policy, interval_s=interval_s, stop=stop,
                                    publish=self.publish)


@asynccontextmanager
async def completer_for(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Completer]:
    """The completer for `settings`: its own small pool (on a migrated database; `migrate` False when a
    service runs on it already, whose migrations would otherwise take their locks again under its load),
    the settings' lock policy, and the payments publisher of their isolation design."""
    async with _pool(settings, migrate=migrate) as pool:
        # Nothing is ever armed in this process: the store's fault points stay inert.
        store = make_store(settings.isolation, pool, Faults({}, Metrics()))
        if not shard_urls(settings):
            yield Completer(pool, policy_of(settings), publisher(store))
            return
        # Tenants' rows live on shards: a recovered payment is published on its tenant's shard, through the
        # placements the service reads (and retried past a move's fence, as the service's own writes are).
        shards = ShardSet(settings, pool)
        await shards.open()
        store.use_shards(shards)
        try:
            yield Completer(pool, policy_of(settings), publisher(store))
        finally:
            await shards.close()


async def run_completer(settings: Settings, *, interval_s: float, once: bool) -> int:
    """One pass (`once`: returns how many requests it finished or rolled back), or passes every
    `interval_s` seconds until signalled (returns 0)."""
    async with completer_for(settings) as c:
        if once:
            return await c.run_once()
        await _until_signalled(lambda stop: c.run_forever(interval_s=interval_s, stop=stop))
        return 0


async def run_reaper(settings: Settings, *, interval_s: float, once: bool) -> int:
    """One pass (`once`: returns how many expired keys it deleted), or passes every `interval_s`
    seconds until signalled (returns 0)."""
    async with _pool(settings) as pool:
        if once:
            return await reaper.run_once(pool, wall_clock_us())
        await _until_signalled(lambda stop: reaper.run_forever(pool, interval_s=interval_s, stop=stop))
        return 0
