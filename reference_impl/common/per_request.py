"""The single Redis round trip of a /v1 request (docs/design.md: at most one for all per-request patterns).

With rate limiting off it only meters usage (per_request.lua). With it on, the limiter's own script
decides and meters in the same round trip (`reference_impl.ratelimit.service`), never both.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from reference_impl.common.identity import Tenant
from reference_impl.common.problem import Problem
from reference_impl.common.redis_client import ScriptRunner, SentinelMaster
from reference_impl.common.usage import usage_key, usage_period

SCRIPT = (Path(__file__).parent / "per_request.lua").read_text()
# Usage counters outlive their month long enough to bill it afterwards.
USAGE_TTL_S = 62 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Admission:
    period: str
    requests: int | None
    """None when Redis could not count this request (the rate limiter failed open or closed)."""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    """Added to the response (the `RateLimit-*` headers)."""
    refusal: Problem | None = None
    """When set, the answer instead of the route's (429, or 503 from a fail-closed limiter)."""
    lease: str | None = None
    """A concurrency lease the rate limiter's script took in the same round trip, for a tenant with
    `limits.concurrency` (reference_impl/ratelimit/concurrency.py gives it back after the response)."""


class Limiter(Protocol):
    """What a rate limiter gives the request's round trip (reference_impl/ratelimit/service.py's
    `RateLimitService`): a decision that also counts the request's usage."""

    def admit(self, tenant: Tenant, period: str) -> Awaitable[Admission]: ...

    async def close(self) -> None: ...


class PerRequest:
    def __init__(self, redis_url: str, prefix: str, limiter: Limiter | None = None, *,
                 sentinel: SentinelMaster | None = None) -> None:
        self._script = ScriptRunner(redis_url, SCRIPT, sentinel=sentinel)
        self._limiter = limiter
        self._prefix = prefix
        self._period = ""
        self._period_ends = 0.0

    def _current_period(self) -> str:
        now = time.time()
        if now >= self._period_ends:  # formatted once a month, not per request
            self._period = usage_period(now)
            year, month = time.gmtime(now)[:2]
            self._period_ends = calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0))
        return self._period

    async def close(self) -> None:
        await self._script.close()
        if self._limiter is not None:
            await self._limiter.close()

    def admit(self, tenant: Tenant) -> Awaitable[Admission]:
        # A plain function handing back the limiter's coroutine: one frame less on every /v1 request.
        period = self._current_period()
        if self._limiter is not None:
            return self._limiter.admit(tenant, period)
        return self._count(tenant, period)

    async def _count(self, tenant: Tenant, period: str) -> Admission:
        used = await self._script((usage_key(self._prefix, tenant.id, period),), (USAGE_TTL_S,))
        return Admission(period, int(used))
