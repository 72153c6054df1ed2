"""The three idempotency designs behind one interface, and the factory the service uses.

Each runs the payment machine of core.py (`core.pay_steps`, through `ledger.carry_payment`); the
round trips of each store's operations are declared in round_trips.py.

* `none` (NoIdempotency): DELIBERATELY UNSAFE. Every request executes, with a fresh provider token,
  so a retried or concurrent payment charges again. It exists so the checker can be shown to catch
  duplicates (invariants.py); never select it for anything but that demonstration.
* `redis` (redis_store.RedisIdempotency): an atomic claim plus the stored response in Redis.
* `postgres` (postgres.PostgresIdempotency): atomic phases with recovery points, a completer and
  a reaper.

Per POST under /v1 that carries `Idempotency-Key`, in this order (`now_us` is the app's clock,
`time.time_ns() // 1000`):

1. `key = core.validate_key(header)`; InvalidIdempotencyKey -> 400, nothing stored.
2. Authenticate, rate-limit, read and validate the body (for `/v1/payments`, build a
   `ledger.PaymentRequest`); a refusal here is answered as usual and nothing is stored.
   (The service authenticates and rate-limits before step 1, so that a 400 carries the
   `RateLimit-*` headers like any /v1 response; the body still comes after the key: http.py.)
3. `fp = core.fingerprint(method, path_and_query, body)`.
4. `claim = await design.claim(tenant_id, key, fp, now_us, payment=request_or_None)`, then by
   `claim.outcome`:
   * REPLAY: send `claim.response` as stored, plus `Idempotent-Replayed: true`.
   * CONFLICT: 409 problem with `Retry-After: claim.retry_after_s`.
   * MISMATCH: 422 problem, type ending in `/idempotency-key-mismatch`.
   * EXECUTE or RECOVER (`claim.runs`), a payment:
     `response = await design.pay(claim, request, now_us, fault=..., checkpoint=...)`, and send it.
     ProviderTimeout means the outcome is unknown: answer 504 with `Retry-After: 1` and store
     nothing (the claim was released; the retry resumes it with the same provider token).
   * EXECUTE or RECOVER, any other route: run the handler (on RECOVER it runs again: such routes
     have no recovery point between `started` and `finished`), then
     `response = await design.finish(claim, StoredResponse(status, kept_headers, body))` and send
     that (the first stored response wins). Store a handler's 500 too (Stripe does), and keep
     only headers that belong to the outcome (content-type, location), not per-request ones
     (RateLimit-*).

A POST without the header is not idempotent: run it as the `none` design does, with key "".
"""

from __future__ import annotations

from typing import Protocol

from redis.asyncio import Redis

from reference_impl.common.db import Pool
from reference_impl.common.redis_client import SentinelMaster
from reference_impl.idempotency.core import Claim, Policy, StoredResponse, claim_step, finish_step
from reference_impl.idempotency.ledger import (
    ChargeThenRecord,
    Checkpoint,
    PaymentRequest,
    Publish,
    carry_payment,
    new_token,
)
from reference_impl.idempotency.postgres import PostgresIdempotency
from reference_impl.idempotency.provider import ProviderFault
from reference_impl.idempotency.redis_store import RedisIdempotency

DESIGNS = ("none", "redis", "postgres")
_KEEPS_NOTHING = Policy()
"""The `none` design's claims decide on no record, so the policy never matters."""


class IdempotencyDesign(Protocol):
    design: str

    async def load(self) -> None:
        """Prepare at startup (Redis: load the scripts)."""

    async def claim(self, tenant_id: str, key: str, fingerprint: str, now_us: int, *,
                    payment: PaymentRequest | None = None) -> Claim: ...

    async def finish(self, claim: Claim, response: StoredResponse) -> StoredResponse:
        """Store a running claim's response; returns what is stored, which is what to send."""

    async def release(self, claim: Claim, now_us: int) -> None: ...

    async def pay(self, claim: Claim, request: PaymentRequest, now_us: int, *, fault: ProviderFault | None = None,
                  checkpoint: Checkpoint | None = None) -> StoredResponse:
        """Carry a running payment claim to `finished`; raises ProviderTimeout on an unknown outcome."""


class NoIdempotency(ChargeThenRecord):
    """UNSAFE ON PURPOSE: see the module docstring."""

    design = "none"

    def __init__(self, pool: Pool, *, publish: Publish | None = None) -> None:
        self._pool = pool
        self._publish = publish

    async def load(self) -> None:
        """Nothing to load."""

    async def claim(self, tenant_id: str, key: str, fingerprint: str, now_us: int, *,
                    payment: PaymentRequest | None = None) -> Claim:
        """The core's claim step on a store that keeps nothing: every request finds no record."""
        return claim_step(None, tenant_id, key, fingerprint, now_us, _KEEPS_NOTHING, new_token()).claim

    async def finish(self, claim: Claim, response: StoredResponse) -> StoredResponse:
        return finish_step(None, claim.token, response).response

    async def release(self, claim: Claim, now_us: int) -> None:
        """Nothing holds a lock."""

    async def pay(self, claim: Claim, request: PaymentRequest, now_us: int, *, fault: ProviderFault | None = None,
                  checkpoint: Checkpoint | None = None) -> StoredResponse:
        return await carry_payment(self, self._pool, claim, request, now_us, fault, checkpoint, self._publish)


def make_design(design: str, *, pool: Pool, redis: Redis, prefix: str, policy: Policy | None = None,
                publish: Publish | None = None, redis_url: str | None = None,
                sentinel: SentinelMaster | None = None) -> IdempotencyDesign:
    """The design named `design`; `publish` (ledger.Publish) is called with each recorded payment.
    With `redis_url` the `redis` design claims keys through an auto-pipelined ScriptRunner."""
    if design == "none":
        return NoIdempotency(pool, publish=publish)
    if design == "redis":
        return RedisIdempotency(redis, pool, prefix, policy, publish=publish, redis_url=redis_url,
                                sentinel=sentinel)
    if design == "postgres":
        return PostgresIdempotency(pool, policy, publish=publish)
    raise ValueError(f"unknown idempotency design {design!r}; choose one of {', '.join(DESIGNS)}")
