"""Rate limiting's service face: the limiter takes over the /v1 request's one Redis round trip.

With `SAASLAB_RATELIMIT=off` it adds nothing, and the app's own `PerRequest` only meters usage.
Otherwise it provides a `PerRequest` whose round trip is the limiter's script, deciding and
counting usage together (reference_impl/common/per_request.py); the app closes it at shutdown.
"""

from __future__ import annotations

from pathlib import Path

from reference_impl.common.metrics import counter, counter_family, gauge
from reference_impl.common.per_request import PerRequest
from reference_impl.common.service import ServiceContext, ServiceParts
from reference_impl.ratelimit.service import RateLimitService

MIGRATIONS: tuple[Path, ...] = ()


def install(ctx: ServiceContext) -> ServiceParts:
    settings = ctx.settings
    if settings.ratelimit == "off":
        return ServiceParts()
    assert settings.redis_url is not None
    limiter = RateLimitService(settings, ctx.redis)
    ctx.provide(PerRequest, PerRequest(settings.redis_url, settings.redis_prefix, limiter))
    return ServiceParts(metrics=(
        counter_family("saaslab_ratelimit_decisions_total", "Rate-limit decisions by outcome", "outcome",
                       lambda: limiter.outcomes),
        counter("saaslab_ratelimit_redis_calls_total", "Limiter calls the circuit breaker let through to Redis",
                lambda: limiter.redis_calls),
        gauge("saaslab_ratelimit_breaker_open", "1 while the limiter's circuit breaker keeps calls off Redis",
              lambda: float(limiter.breaker.state.name != "closed")),
    ))
