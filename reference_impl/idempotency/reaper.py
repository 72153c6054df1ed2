"""The reaper of the `postgres` design: deletes idempotency keys past their retention.

A key is expired exactly when `core.expired` says so (`now_us >= expires_at_us`); since a record
never expires while locked, a request in flight is never reaped. An abandoned claim reaped before
the completer finished it would leave its charge without a payment, which is why the lock timeout
(90 s) is far below the retention (24 h) and the completer runs far more often than that.
Payment rows are the ledger and are never reaped. Deletes go in batches, so no pass holds many
row locks at once.

`run_once` is one pass (tests call it with their own clock); `run_forever` is the process loop
for a `saaslab` subcommand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from reference_impl.common.db import Pool
from reference_impl.idempotency.completer import wall_clock_us

log = logging.getLogger("saaslab.idempotency.reaper")
BATCH = 10_000

# SKIP LOCKED: a row locked right now is being claimed or taken over; the next pass gets it if it
# is still expired then.
_REAP = ("DELETE FROM idempotency_keys WHERE (tenant_id, key) IN ("
         "SELECT tenant_id, key FROM idempotency_keys WHERE expires_at_us <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)")


async def run_once(pool: Pool, now_us: int, *, batch: int = BATCH) -> int:
    """Delete every key expired at `now_us`; returns how many."""
    deleted = 0
    while True:
        async with pool.connection() as conn:
            n = int((await conn.execute(_REAP, now_us, batch)).split()[-1])
        deleted += n
        if n < batch:
            return deleted


async def run_forever(pool: Pool, *, interval_s: float = 60.0, stop: asyncio.Event | None = None,
                      clock: Callable[[], int] = wall_clock_us) -> None:
    """Pass after pass until `stop` is set."""
    stop = stop or asyncio.Event()
    while not stop.is_set():
        deleted = await run_once(pool, clock())
        if deleted:
            log.info("reaped %d expired idempotency keys", deleted)
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except TimeoutError:
            pass
