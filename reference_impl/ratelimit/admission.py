"""Admission control beside the rate limiter, built in one call: the concurrency limiter and the
priority load shedder with their metrics (`admission_control`).

Where the two middlewares go (reference_impl/ratelimit/wiring.py): `ConcurrencyMiddleware` inside the tenant auth middleware,
since it needs the resolved tenant; `LoadSheddingMiddleware` (present only when `shed_capacity` > 0)
outside it, so shed requests cost no auth and no Redis. `close()` belongs in the app's lifespan.
"""

from __future__ import annotations

from dataclasses import dataclass

from reference_impl.common.metrics import Metrics
from reference_impl.ratelimit.concurrency import ConcurrencyControl
from reference_impl.ratelimit.shedding import Shedding
from saaslab.settings import Settings


@dataclass
class AdmissionControl:
    concurrency: ConcurrencyControl
    shedding: Shedding | None

    async def close(self) -> None:
        await self.concurrency.close()


def admission_control(settings: Settings, metrics: Metrics) -> AdmissionControl:
    """The concurrency limiter and (when configured) the load shedder for `settings`, their metrics registered."""
    concurrency = ConcurrencyControl(settings)
    metrics.counter_family("saaslab_concurrency_decisions_total",
                           "Requests of tenants with a concurrency limit, by outcome (admitted, limited, "
                           "limiter_unavailable)", "outcome", lambda: concurrency.outcomes)
    metrics.gauge("saaslab_concurrency_in_flight", "Requests of this worker holding a concurrency lease",
                  lambda: concurrency.in_flight)
    shedding = Shedding.from_settings(settings)
    if shedding is not None:
        metrics.counter_family("saaslab_shed_requests_total", "/v1 requests shed (503 load-shed), by route class",
                               "class", lambda: shedding.shed)
        metrics.counter_family("saaslab_shed_admitted_total", "/v1 requests the load shedder admitted, by route class",
                               "class", lambda: shedding.admitted)
        metrics.gauge("saaslab_in_flight_requests", "/v1 requests this worker is serving (the shedder's load)",
                      lambda: shedding.in_flight)
        metrics.gauge("saaslab_shed_capacity", "/v1 requests in flight per worker at full capacity",
                      lambda: shedding.core.capacity)
    return AdmissionControl(concurrency, shedding)
