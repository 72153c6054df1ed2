"""The completer and the reaper as processes: what `saaslab completer` and `saaslab reaper` run.

Both work on the `postgres` design's `idempotency_keys` table, whatever `SAASLAB_IDEMPOTENCY` says
(with another design the table is empty, or holds what an earlier run left). Each opens its own
small pool, applies the service's migrations (idempotent; so it may start before the service),
and runs `run_once` (one pass, returning how many it handled) or `run_forever` until SIGINT or
SIGTERM. The completer publishes the payments it finishes to the payments table of the isolation
design in `SAASLAB_ISOLATION`, exactly as the service would have: run it with the service's settings.
Like app.py it composes patterns (idempotency's completer, tenancy's store), so it sits beside it,
above both.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, suppress

from reference_impl.app import MIGRATIONS
from reference_impl.common.db import Pool, migrated_pool
from reference_impl.common.faults import Faults
from reference_impl.common.metrics import Metrics
from reference_impl.idempotency import completer, reaper
from reference_impl.idempotency.http import policy_of, wall_clock_us
from reference_impl.tenancy.repository import make_store, publisher
from saaslab.settings import Settings


def _pool(settings: Settings) -> AbstractAsyncContextManager[Pool]:
    if not settings.database_url:
        raise ValueError("settings.database_url is not set")
    return migrated_pool(settings.database_url, MIGRATIONS)


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


async def run_completer(settings: Settings, *, interval_s: float, once: bool) -> int:
    """One pass (`once`: returns how many requests it finished or rolled back), or passes every
    `interval_s` seconds until signalled (returns 0)."""
    async with _pool(settings) as pool:
        # Nothing is ever armed in this process: the store's fault points stay inert.
        store = make_store(settings.isolation, pool, Faults({}, Metrics()))
        policy, publish = policy_of(settings), publisher(store)
        if once:
            return await completer.run_once(pool, wall_clock_us(), policy=policy, publish=publish)
        await _until_signalled(lambda stop: completer.run_forever(pool, policy=policy, interval_s=interval_s,
                                                                  stop=stop, publish=publish))
        return 0


async def run_reaper(settings: Settings, *, interval_s: float, once: bool) -> int:
    """One pass (`once`: returns how many expired keys it deleted), or passes every `interval_s`
    seconds until signalled (returns 0)."""
    async with _pool(settings) as pool:
        if once:
            return await reaper.run_once(pool, wall_clock_us())
        await _until_signalled(lambda stop: reaper.run_forever(pool, interval_s=interval_s, stop=stop))
        return 0
