"""Idempotency's service face: the design `SAASLAB_IDEMPOTENCY` names, behind every POST under /v1.

Needs the `PaymentSink` (tenancy's payments table) to publish recorded payments to, and provides
`IdempotentRequests`, through which the /v1 POST routes answer (reference_impl/idempotency/http.py).
Its middleware refuses a malformed Idempotency-Key before the router runs.
"""

from __future__ import annotations

from starlette.middleware import Middleware

from reference_impl.common.metrics import counter, counter_family
from reference_impl.common.redis_client import sentinel_master
from reference_impl.common.service import PaymentSink, ServiceContext, ServiceParts
from reference_impl.idempotency import postgres, provider
from reference_impl.idempotency.designs import NoIdempotency, make_design
from reference_impl.idempotency.http import (
    FAULT_POINTS,
    IdempotencyKeyMiddleware,
    IdempotentRequests,
    policy_of,
)

MIGRATIONS = (provider.SCHEMA, postgres.SCHEMA)


def install(ctx: ServiceContext) -> ServiceParts:
    settings = ctx.settings
    publish = ctx.need(PaymentSink)
    design = make_design(settings.idempotency, pool=ctx.pool, redis=ctx.redis, prefix=settings.redis_prefix,
                         policy=policy_of(settings), publish=publish, redis_url=settings.redis_url,
                         sentinel=sentinel_master(settings))
    requests = IdempotentRequests(design, unprotected=NoIdempotency(ctx.pool, publish=publish), faults=ctx.faults,
                                  unavailable=ctx.unavailable_errors)
    ctx.provide(IdempotentRequests, requests)
    return ServiceParts(
        middleware=(Middleware(IdempotencyKeyMiddleware, requests=requests),),
        fault_points=FAULT_POINTS,
        metrics=(
            counter_family("saaslab_idempotency_decisions_total",
                           "POSTs under /v1 by idempotency outcome (replay, conflict, mismatch, execute, recover, "
                           "no_key, invalid_key)", "outcome", lambda: requests.decisions),
            counter("saaslab_idempotency_provider_timeouts_total",
                    "Payments answered 504 because the provider's answer was lost (nothing stored)",
                    lambda: requests.provider_timeouts),
        ),
        on_start=(requests.load,),
        on_stop=(requests.close,),
        state={"idempotency": requests},
    )
