"""Rate limiting's service face: the limiter takes over the /v1 request's one Redis round trip, and
the concurrency limiter and priority load shedder guard admission (reference_impl/ratelimit/admission.py).

With `SAASLAB_RATELIMIT=off` the limiter adds nothing, and the app's own `PerRequest` only meters
usage. Otherwise it provides a `PerRequest` whose round trip is the limiter's script, deciding,
counting usage and taking a concurrency lease together (reference_impl/common/per_request.py).
The concurrency limiter works either way: without the limiter's script it makes its own call.
"""

from __future__ import annotations

from pathlib import Path

from starlette.middleware import Middleware

from reference_impl.common.metrics import counter, counter_family, gauge
from reference_impl.common.per_request import PerRequest
from reference_impl.common.redis_client import sentinel_master
from reference_impl.common.service import ServiceContext, ServiceParts
from reference_impl.ratelimit.admission import admission_control
from reference_impl.ratelimit.concurrency import ConcurrencyMiddleware
from reference_impl.ratelimit.service import RateLimitService
from reference_impl.ratelimit.shedding import LoadSheddingMiddleware

MIGRATIONS: tuple[Path, ...] = ()


def install(ctx: ServiceContext) -> ServiceParts:
    settings = ctx.settings
    admission = admission_control(settings, ctx.metrics)
    shedding = () if admission.shedding is None else (Middleware(LoadSheddingMiddleware, shedding=admission.shedding),)
    parts = {"middleware": (Middleware(ConcurrencyMiddleware, control=admission.concurrency),),
             "outer_middleware": shedding, "on_stop": (admission.close,)}
    if settings.ratelimit == "off":
        return ServiceParts(**parts)
    assert settings.redis_url is not None
    limiter = RateLimitService(settings, admission.concurrency)
    ctx.provide(PerRequest, PerRequest(settings.redis_url, settings.redis_prefix, limiter,
                                          sentinel=sentinel_master(settings)))
    return ServiceParts(**parts, metrics=(
        counter_family("saaslab_ratelimit_decisions_total", "Rate-limit decisions by outcome", "outcome",
                       lambda: limiter.outcomes),
        counter("saaslab_ratelimit_redis_calls_total", "Limiter calls the circuit breaker let through to Redis",
                lambda: limiter.redis_calls),
        gauge("saaslab_ratelimit_breaker_open", "1 while the limiter's circuit breaker keeps calls off Redis",
              lambda: float(limiter.breaker.state.name != "closed")),
    ))
