"""The completer of the `postgres` design: finishes requests abandoned past their lock timeout.

A request is abandoned when its worker crashed (or its client went away) between recovery
points; its row stays unfinished and, once the lock has run out, nothing else would touch it
unless the client retried. The completer finds such claims (`_ABANDONED`, the SQL of
`core.abandoned`), takes each over (`take_over`: `core.take_over_step`, the same RECOVER decision,
under the row lock, as a retry's) and does what `core.recovery` says:

* a payment (its parameters were stored with the claim) resumes from its recovery point through
  `pay`, asking the provider again with the claim's token: the charge made before the crash, if
  any, comes back instead of a second one. A declined charge finishes with the stored 402 (the
  request is rolled back: no charge, no payment). A provider timeout leaves the claim released
  for the next pass.
* any other request has no recovery point between `started` and `finished`, so it cannot be
  resumed: it is rolled back, deleting the claim (`_ROLL_BACK`, the SQL of `core.roll_back_step`),
  and the client's retry executes afresh.

`run_once` is one pass (tests call it with their own clock); `run_forever` is the process loop
for a `saaslab` subcommand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from reference_impl.common.db import Pool
from reference_impl.idempotency.core import COMPLETER_BATCH, Policy, Recovery, recovery
from reference_impl.idempotency.ledger import ClaimLost, Publish
from reference_impl.idempotency.postgres import PostgresIdempotency
from reference_impl.idempotency.provider import ProviderTimeout

log = logging.getLogger("saaslab.idempotency.completer")
BATCH = COMPLETER_BATCH

# Expired claims are the reaper's: taking one over would decide EXECUTE, not RECOVER.
_ABANDONED = ("SELECT tenant_id, key FROM idempotency_keys"
              " WHERE state <> 'finished' AND locked_until_us <= $1 AND expires_at_us > $1"
              " ORDER BY locked_until_us LIMIT $2")
_ROLL_BACK = "DELETE FROM idempotency_keys WHERE token = $1 AND state = 'started'"


def wall_clock_us() -> int:
    return time.time_ns() // 1000


async def run_once(pool: Pool, now_us: int, *, policy: Policy | None = None, batch: int = BATCH,
                   publish: Publish | None = None) -> int:
    """Finish or roll back up to `batch` requests abandoned at `now_us`; returns how many. `publish`
    is the service's (ledger.Publish), so a payment the completer finishes shows up as the request's would."""
    store = PostgresIdempotency(pool, policy, publish=publish)
    async with pool.connection() as conn:
        candidates = await conn.fetch(_ABANDONED, now_us, batch)
    done = 0
    for tenant_id, key in candidates:
        taken = await store.take_over(tenant_id, key, now_us)
        if taken is None:  # a retry recovered it first, or it finished meanwhile
            continue
        claim, payment = taken
        if recovery(payment is not None) == Recovery.ROLL_BACK:
            async with pool.connection() as conn:
                done += await conn.execute(_ROLL_BACK, claim.token) == "DELETE 1"
            continue
        assert payment is not None
        try:
            await store.pay(claim, payment, now_us)
        except ProviderTimeout:
            log.warning("provider timed out resuming key %r of tenant %s; retrying next pass", key, tenant_id)
            continue
        except ClaimLost:  # only if this pass outlived its lock and the reaper came: never under one clock
            log.error("key %r of tenant %s was reaped while being completed; its charge may lack a payment",
                      key, tenant_id)
            continue
        done += 1
    return done


async def run_forever(pool: Pool, *, policy: Policy | None = None, interval_s: float = 1.0,
                      stop: asyncio.Event | None = None, clock: Callable[[], int] = wall_clock_us,
                      publish: Publish | None = None) -> None:
    """Pass after pass until `stop` is set; a full batch is followed at once by the next pass."""
    stop = stop or asyncio.Event()
    while not stop.is_set():
        done = await run_once(pool, clock(), policy=policy, publish=publish)
        if done:
            log.info("completed %d abandoned requests", done)
        if done < BATCH:
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except TimeoutError:
                pass
