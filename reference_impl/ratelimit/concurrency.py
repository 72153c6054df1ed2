"""The concurrency limiter in the service: at most `limits.concurrency` of a tenant's /v1 requests in
flight at once, across all service workers (docs/contract.md, "Rate limiting").

`ConcurrencyMiddleware` sits inside the tenant auth middleware (it reads the resolved `Tenant` and
its `Admission` from the scope). A tenant without `limits.concurrency` costs it one dict lookup and
no Redis call, so the request keeps its one round trip. A tenant with one gets a lease before its
request runs: in the rate limiter's own round trip (`service.RateLimitService`, which then answers
the excess itself), else (rate limiting off, `naive`, or the limiter's call failed) by a call of
its own here (`concurrency.lua` through `redis_store.RedisConcurrencyLimiter`). The lease is given
back with a ZREM once the response is sent, the request's second call; that release runs as a task
of its own, so a client that goes away mid-request cannot cancel it. A worker killed mid-request never releases: its lease expires
after `concurrency_lease_ms` and the slot comes back.

The excess is answered 429 problem+json, type `/concurrency-limit`, with `Retry-After: 1`: a slot
frees as soon as any of the tenant's requests ends, usually long before the oldest lease would
expire (the core's `retry_after_us` is only that upper bound).

When Redis cannot decide within `ratelimit_timeout_ms`, the rate limiter's failure policy applies:
`open` admits without a lease, `closed` answers 503 `/ratelimit-unavailable`. Shadow mode
(`ratelimit_mode`) concerns the rate limit only: the concurrency limit is always enforced.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets

import redis.exceptions
from starlette.types import ASGIApp, Receive, Scope, Send

from reference_impl.common.auth import ADMISSION_SCOPE_KEY, TENANT_SCOPE_KEY
from reference_impl.common.problem import Problem
from reference_impl.common.redis_client import sentinel_master
from reference_impl.ratelimit.breaker import FailurePolicy
from reference_impl.ratelimit.redis_store import RedisConcurrencyLimiter
from saaslab.settings import Settings

log = logging.getLogger("saaslab.ratelimit")

OUTCOMES = ("admitted", "limited", "limiter_unavailable")
"""Decisions for tenants with a concurrency limit: a lease taken, refused (429), Redis could not decide."""
RETRY_AFTER_S = 1
LIMITER_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, TimeoutError, OSError)


class ConcurrencyControl:
    """One worker's side of the limiter: the adapter, the failure policy and the counts /metrics reads."""

    def __init__(self, settings: Settings) -> None:
        if not settings.redis_url:
            raise ValueError("the concurrency limiter needs settings.redis_url")
        self.limiter = RedisConcurrencyLimiter(settings.redis_url, settings.redis_prefix,
                                               lease_us=settings.concurrency_lease_ms * 1000,
                                               sentinel=sentinel_master(settings))
        self.timeout_s = settings.ratelimit_timeout_ms / 1000
        self.failure = FailurePolicy(settings.ratelimit_failure)
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.in_flight = 0
        """This worker's requests holding a lease now."""
        self._releases: set[asyncio.Task[None]] = set()
        self._lease_prefix = secrets.token_hex(8) + "-"
        self._lease_numbers = itertools.count()

    async def close(self) -> None:
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)
        await self.limiter.close()

    def new_lease_id(self) -> str:
        """Unique across workers and machines: a random prefix per process, then a counter."""
        return f"{self._lease_prefix}{next(self._lease_numbers)}"

    def refusal(self, limit: int, headers: dict[str, str] | None = None) -> Problem:
        """The answer over the limit: 429 `/concurrency-limit` (plus the rate limiter's headers, if any)."""
        return Problem(429, "concurrency-limit",
                       f"This tenant may have {limit} requests in flight at once; retry once one has finished.",
                       headers={**(headers or {}), "Retry-After": str(RETRY_AFTER_S)})

    def release_later(self, tenant_id: str, lease_id: str) -> None:
        task = asyncio.ensure_future(self._release(tenant_id, lease_id))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, tenant_id: str, lease_id: str) -> None:
        try:
            await self.limiter.release(tenant_id, lease_id)
        except LIMITER_ERRORS as exc:  # the lease expires on its own
            log.warning("could not release a concurrency lease of tenant %s: %r", tenant_id, exc)


class ConcurrencyMiddleware:
    """Leases a slot for each /v1 request of a tenant with `limits.concurrency` (pure ASGI)."""

    def __init__(self, app: ASGIApp, *, control: ConcurrencyControl) -> None:
        self.app = app
        self.control = control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Set by the tenant auth middleware on /v1 requests only.
        tenant = scope.get(TENANT_SCOPE_KEY)
        limits = tenant.limits if tenant is not None else None
        if not limits or (limit := limits.get("concurrency")) is None:
            await self.app(scope, receive, send)
            return
        control = self.control
        admission = scope.get(ADMISSION_SCOPE_KEY)
        lease_id = admission.lease if admission is not None else None
        if lease_id is None:  # the rate limiter did not take it: rate limiting off, `naive`, or Redis failed
            try:
                async with asyncio.timeout(control.timeout_s):
                    lease = await control.limiter.acquire(tenant.id, limit, lease_id=control.new_lease_id())
            except LIMITER_ERRORS:
                control.outcomes["limiter_unavailable"] += 1
                if control.failure.admits:
                    await self.app(scope, receive, send)
                    return
                await Problem(503, "ratelimit-unavailable",
                              "The concurrency limiter cannot decide right now; retry later.",
                              headers={"Retry-After": str(RETRY_AFTER_S)}).send(send)
                return
            if not lease.allowed:
                control.outcomes["limited"] += 1
                await control.refusal(limit).send(send)
                return
            control.outcomes["admitted"] += 1
            lease_id = lease.lease_id
        control.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            control.in_flight -= 1
            control.release_later(tenant.id, lease_id)
