"""Rate limiting as the service runs it: the glue between the auth middleware and the limiter.

`RateLimitService.admit` is the /v1 request's one Redis round trip when rate limiting is on: the
algorithm's script (prelude + `<algorithm>.lua`) by EVALSHA through the limiter adapter
(`redis_store.make_limiter`, the object the parity tests and the benchmark run too), deciding and
counting the tenant's usage together. (`naive` keeps its two round trips: it is the unsafe baseline.) It answers an `Admission` carrying the `RateLimit-*` headers and, when the request must
not pass, the problem to answer with (429, or 503 when failing closed).

When Redis is slow or down: each call is bounded by `ratelimit_timeout_ms`, and one
`CircuitBreaker` per worker stops calling Redis after `fail_max` consecutive failures, so a dead
Redis costs at most one timeout per breaker window. Meanwhile the failure policy decides: `open`
admits with only `RateLimit-Policy` and does not count usage (the count lives in the same script);
`closed` answers 503 with `Retry-After` from the breaker.

The tenant's policy is read from the `Tenant` the directory resolved (its `limits` or its plan's
default), so a `PATCH /admin/tenants/{id}` reaches a worker when its tenant cache entry expires.

A tenant with `limits.concurrency` gets its concurrency lease in the same round trip: the call carries
a `LeaseRequest` and the script, when it admits, takes the lease too (prelude.lua's `finish`). The
admission then carries the lease, which `concurrency.ConcurrencyMiddleware` gives back after the
response; over the concurrency limit the answer is its 429 `/concurrency-limit`. (`naive` leaves
the lease to the middleware's own call.)

In lab mode every decided answer, allowed or refused, also carries `Saaslab-Decided-At`: the
limiter's own clock at the decision in µs (Redis TIME, or the app's clock for `naive`), which a
load test records so the checker can judge aligned windows and refill on the limiter's time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis.exceptions

from reference_impl.common.identity import Tenant
from reference_impl.common.per_request import Admission
from reference_impl.common.problem import Problem
from reference_impl.common.redis_client import sentinel_master
from reference_impl.ratelimit.breaker import FailurePolicy, redis_breaker
from reference_impl.ratelimit.concurrency import ConcurrencyControl
from reference_impl.ratelimit.core import US_PER_S, Policy, ratelimit_headers, remaining_header, reset_header
from reference_impl.ratelimit.invariants import DECIDED_AT_HEADER
from reference_impl.ratelimit.policies import policy_for
from reference_impl.ratelimit.redis_store import (
    ConcurrencyResult,
    LeaseRequest,
    LimitResult,
    NaiveRedisRateLimiter,
    PreparedCall,
    RedisRateLimiter,
    leased_result,
    make_limiter,
    result,
)
from saaslab.settings import Settings

OUTCOMES = ("allowed", "limited", "would_limit", "limiter_unavailable")
"""`would_limit`: refused in shadow mode, admitted anyway. `limiter_unavailable`: Redis could not decide."""
# What "Redis could not decide" looks like: refused, reset, timed out, or answering errors (OOM, BUSY).
LIMITER_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, TimeoutError, OSError)
Headers = tuple[tuple[bytes, bytes], ...]


def _now_us() -> int:
    return time.monotonic_ns() // 1000


def _encode(headers: Mapping[str, str]) -> Headers:
    return tuple((name.lower().encode(), value.encode()) for name, value in headers.items())


def _time_out(call: asyncio.Future[object]) -> None:
    if not call.done():
        call.set_exception(TimeoutError("the rate limiter's Redis call timed out"))


@dataclass(slots=True)
class _TenantLimit:
    """Per tenant, worked out once per resolved `Tenant` rather than per request: the policy, the
    headers that do not change between decisions (encoded), and the limiter call of `period`."""

    tenant: Tenant
    policy: Policy
    policy_header: dict[str, str]
    limit_header: tuple[bytes, bytes]
    policy_header_encoded: tuple[bytes, bytes]
    concurrency: int | None
    """The tenant's `limits.concurrency`."""
    period: str = ""
    call: PreparedCall | None = None
    """The limiter's call for `period`, packed once a period (the usage key changes once a month)."""


class RateLimitService:
    def __init__(self, settings: Settings, concurrency: ConcurrencyControl | None = None) -> None:
        if settings.ratelimit == "off" or not settings.redis_url:
            raise ValueError("RateLimitService needs settings.ratelimit != 'off' and settings.redis_url")
        self.algorithm = settings.ratelimit
        self.shadow = settings.ratelimit_mode == "shadow"
        self.lab_mode = settings.lab_mode
        self.failure = FailurePolicy(settings.ratelimit_failure)
        self.timeout_s = settings.ratelimit_timeout_ms / 1000
        self.breaker = redis_breaker(fail_max=settings.ratelimit_breaker_fail_max,
                                     reset_timeout_us=round(settings.ratelimit_breaker_reset_s * US_PER_S))
        self.limiter = make_limiter(settings.redis_url, settings.redis_prefix, self.algorithm,
                                    sentinel=sentinel_master(settings))
        # Leases in the limiter's round trip need its script: not `naive`'s.
        self.concurrency = concurrency if isinstance(self.limiter, RedisRateLimiter) else None
        self._tenants: dict[str, _TenantLimit] = {}
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.redis_calls = 0
        """Calls that went to Redis (the breaker let them through)."""

    async def close(self) -> None:
        await self.limiter.close()

    def _limit_of(self, tenant: Tenant) -> _TenantLimit:
        entry = self._tenants.get(tenant.id)
        if entry is None or entry.tenant is not tenant:  # a new Tenant object: maybe new limits
            policy = policy_for(tenant.plan, tenant.limits)
            header = ratelimit_headers(policy, allowed=True, remaining=0, reset_us=0, retry_after_us=0)
            entry = _TenantLimit(tenant, policy, {"RateLimit-Policy": header["RateLimit-Policy"]},
                                 *_encode({name: header[name] for name in ("RateLimit-Limit", "RateLimit-Policy")}),
                                 concurrency=tenant.limits.get("concurrency") if tenant.limits else None)
            if len(self._tenants) >= 10_000:
                self._tenants.clear()
            self._tenants[tenant.id] = entry
        return entry

    async def _decide(self, limit: _TenantLimit, period: str) -> LimitResult:
        """One decision from Redis, within `timeout_s` (else TimeoutError)."""
        limiter = self.limiter
        if isinstance(limiter, NaiveRedisRateLimiter):
            async with asyncio.timeout(self.timeout_s):
                return await limiter.decide(limit.tenant.id, limit.policy)
        assert isinstance(limiter, RedisRateLimiter)
        if limit.period != period or limit.call is None:
            limit.period, limit.call = period, limiter.prepare(limit.tenant.id, limit.policy, period)
        call = limiter.send(limit.call)
        # A per-call deadline on the runner's own future (cheaper than asyncio.timeout, which reschedules
        # the task): the reply arriving later finds the future done and is dropped.
        deadline = asyncio.get_running_loop().call_later(self.timeout_s, _time_out, call)
        try:
            return result(await call)
        finally:
            deadline.cancel()

    async def _decide_leased(self, limit: _TenantLimit, period: str, concurrency: ConcurrencyControl
                             ) -> tuple[LimitResult, ConcurrencyResult | None]:
        """One decision that also takes the tenant's concurrency lease when it admits, within `timeout_s`."""
        limiter = self.limiter
        assert isinstance(limiter, RedisRateLimiter) and limit.concurrency is not None
        lease = LeaseRequest(concurrency.new_lease_id(), limit.concurrency, concurrency.limiter.lease_us)
        call = limiter.send(limiter.prepare(limit.tenant.id, limit.policy, period, lease=lease))
        deadline = asyncio.get_running_loop().call_later(self.timeout_s, _time_out, call)
        try:
            return leased_result(await call, lease.lease_id)
        finally:
            deadline.cancel()

    async def admit(self, tenant: Tenant, period: str) -> Admission:
        """Decide one /v1 request of `tenant`, counting it in the usage of `period`."""
        limit = self._limit_of(tenant)
        if not self.breaker.allow(_now_us()):
            return self._unavailable(limit, period)
        self.redis_calls += 1
        lease = None
        try:
            if limit.concurrency is None or self.concurrency is None:
                result = await self._decide(limit, period)
            else:
                result, lease = await self._decide_leased(limit, period, self.concurrency)
        except LIMITER_ERRORS:
            self.breaker.record_failure(_now_us())
            return self._unavailable(limit, period)
        self.breaker.record_success(_now_us())
        if lease is not None:
            return self._leased(limit, period, result, lease)
        if result.allowed and not self.lab_mode:
            # The common answer, built from the encoded constant headers plus the two that change.
            self.outcomes["allowed"] += 1
            return Admission(period, result.usage, headers=(
                limit.limit_header,
                (b"ratelimit-remaining", remaining_header(result.remaining).encode()),
                (b"ratelimit-reset", reset_header(result.reset_us).encode()),
                limit.policy_header_encoded))
        return self._answer(limit, period, result)

    def _leased(self, limit: _TenantLimit, period: str, result: LimitResult, lease: ConcurrencyResult) -> Admission:
        """An admitted request's answer when its call also asked for a lease: with it, or over the concurrency limit."""
        assert self.concurrency is not None and limit.concurrency is not None
        admission = self._answer(limit, period, result)
        if lease.allowed:
            self.concurrency.outcomes["admitted"] += 1
            return dataclasses.replace(admission, lease=lease.lease_id)
        self.concurrency.outcomes["limited"] += 1
        return Admission(period, result.usage, refusal=self.concurrency.refusal(
            limit.concurrency, {name.decode(): value.decode() for name, value in admission.headers}))

    def _answer(self, limit: _TenantLimit, period: str, result: LimitResult) -> Admission:
        """Any decided answer (the allowed one without lab mode is built faster in `admit`)."""
        refused = not result.allowed and not self.shadow
        headers = ratelimit_headers(limit.policy, allowed=not refused, remaining=result.remaining,
                                    reset_us=result.reset_us, retry_after_us=result.retry_after_us)
        if self.lab_mode:
            headers[DECIDED_AT_HEADER] = str(result.decided_us)
        if result.allowed:
            self.outcomes["allowed"] += 1
        elif self.shadow:
            self.outcomes["would_limit"] += 1
        else:
            self.outcomes["limited"] += 1
            window = headers["RateLimit-Policy"].partition("=")[2]
            return Admission(period, result.usage, refusal=Problem(
                429, "rate-limited", f"This tenant may make {limit.policy.requests} requests per {window} s; "
                "retry after the number of seconds in Retry-After.", headers=headers))
        return Admission(period, result.usage, headers=_encode(headers))

    def _unavailable(self, limit: _TenantLimit, period: str) -> Admission:
        self.outcomes["limiter_unavailable"] += 1
        if self.failure.admits:
            return Admission(period, None, headers=(limit.policy_header_encoded,))
        retry_after_s = max(1, -(-self.breaker.retry_after_us(_now_us()) // US_PER_S))
        return Admission(period, None, refusal=Problem(
            503, "ratelimit-unavailable", "The rate limiter cannot decide right now; retry later.",
            headers={"Retry-After": str(retry_after_s), **limit.policy_header}))
