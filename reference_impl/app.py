"""The reference service. `create_app(settings)` is the one place that wires everything.

Run it with `saaslab serve`, or `uvicorn reference_impl.app:app_from_env --factory` with the
`SAASLAB_*` environment set (or the embedded servers up: `saaslab services up`).

Requests pass, outermost first: MetricsMiddleware, ErrorMiddleware, BodyLimitMiddleware,
LoadSheddingMiddleware (only /v1, only with `SAASLAB_SHED_CAPACITY`), TenantAuthMiddleware (only /v1),
ConcurrencyMiddleware (tenants with `limits.concurrency`), IdempotencyKeyMiddleware (only POST under
/v1), then FastAPI's router. All of them are pure ASGI. POST routes claim their Idempotency-Key
themselves, through the design chosen by `SAASLAB_IDEMPOTENCY` (reference_impl/idempotency/http.py
says why).

A worker started from the environment (`app_from_env`: uvicorn, `saaslab serve`) also settles the
garbage collector once it is up (`settle_gc`): the start-up heap is frozen out of the collector's
way and the young generation gets room for the objects in-flight requests keep alive, so the hot
path no longer pays for a collection every few requests.

`GET /bench/bare` is the benchmark's baseline: a tiny JSON answer through the same middleware but
without auth, Redis, PostgreSQL or the scheduler, to compare `GET /v1/projects/{id}` against.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis.exceptions
from fastapi import APIRouter, FastAPI
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from reference_impl.common.auth import TenantAuthMiddleware, admin_guard
from reference_impl.common.db import DB_UNAVAILABLE_ERRORS, Pool, make_pool, migrate, ping
from reference_impl.common.faults import Faults, faults_router
from reference_impl.common.metrics import Metrics
from reference_impl.common.middleware import BodyLimitMiddleware, ErrorMiddleware, MetricsMiddleware
from reference_impl.common.per_request import PerRequest
from reference_impl.common.problem import allowed_methods, install_problem_handlers, unavailable
from reference_impl.common.redis_client import make_redis
from reference_impl.common.routing import DirectRoute
from reference_impl.idempotency import http as idempotency_http
from reference_impl.idempotency import postgres as idempotency_store
from reference_impl.idempotency import provider
from reference_impl.idempotency.designs import NoIdempotency, make_design
from reference_impl.idempotency.http import IdempotencyKeyMiddleware, IdempotentRequests, policy_of, publisher
from reference_impl.ratelimit.admission import admission_control
from reference_impl.ratelimit.concurrency import ConcurrencyMiddleware
from reference_impl.ratelimit.service import RateLimitService
from reference_impl.ratelimit.shedding import LoadSheddingMiddleware
from reference_impl.tenancy import repository
from reference_impl.tenancy.gate import Gate
from reference_impl.tenancy.repository import TenantDirectory, make_store
from reference_impl.tenancy.routes import admin_router, tenant_router
from saaslab.services import EmbeddedServices
from saaslab.settings import Settings

MIGRATIONS = (Path(__file__).parent / "tenancy" / "schema.sql", provider.SCHEMA, idempotency_store.SCHEMA)
READY_TIMEOUT_S = 1.0
# Failures of a backing service: answered 503 (retry later), never 500.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    *DB_UNAVAILABLE_ERRORS, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
)
BARE_BODY = b'{"ok":true}'
# CPython collects its young generation every 700 net allocations of container objects. A worker's
# in-flight requests alone keep a few thousand alive (each suspended request holds its coroutine
# frames, futures and scope), so at that threshold it collected every few requests and promoted
# live request state to older generations; at this one collections run when garbage builds up.
GC_YOUNG_THRESHOLD = 10_000
# The service exports its own Prometheus metrics (/metrics). FastAPI's native OpenTelemetry bridge (newer
# releases) otherwise asks the global OpenTelemetry providers on every request whether one is configured,
# about 4% of a replayed payment's CPU with none configured; older releases have no such parameter.
_NO_NATIVE_TELEMETRY: dict = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})


def settle_gc() -> None:
    """Once start-up is done: freeze the heap it built and give the young generation room.

    The start-up heap (routes, pydantic validators, drivers, the connections just opened) lives as
    long as the process; `gc.freeze` moves it out of the collector's reach, so an older-generation
    collection no longer walks all of it. Measured on the hot path of `GET /v1/projects/{id}`
    (bench/tenancy.py's load): collection time fell from about 12 µs per request to nearly none.
    """
    gc.collect()
    gc.freeze()
    young, *older = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), *older)


def create_app(settings: Settings, *, worker: bool = False) -> FastAPI:
    """The service for `settings` (both URLs set). Pools open in the lifespan, once per app.

    Without `settings.admin_token` a random one is made; either way it is on `app.state.admin_token`.
    `worker`: the app is its process's one service (a uvicorn worker), so its lifespan may tune the
    process (`settle_gc`); apps made in a test process leave the process alone.
    """
    if not settings.database_url or not settings.redis_url:
        raise ValueError("create_app needs settings.database_url and settings.redis_url; "
                         "`saaslab serve` fills them in (starting embedded servers if needed)")
    admin_token = settings.admin_token or secrets.token_urlsafe(32)
    metrics = Metrics()
    faults = Faults({**repository.FAULT_POINTS, **idempotency_http.FAULT_POINTS}, metrics)
    pool = make_pool(settings)
    redis_client = make_redis(settings)
    admission = admission_control(settings, metrics)
    limiter = None if settings.ratelimit == "off" else RateLimitService(settings, admission.concurrency)
    per_request = PerRequest(settings.redis_url, settings.redis_prefix, limiter)
    gate = Gate.from_settings(settings)
    directory = TenantDirectory(pool)
    store = make_store(settings.isolation, pool, faults)
    require_admin = admin_guard(admin_token)
    # Payments are recorded in the idempotency ledger and published to the store's payments table.
    publish = publisher(store)
    design = make_design(settings.idempotency, pool=pool, redis=redis_client, prefix=settings.redis_prefix,
                         policy=policy_of(settings), publish=publish, redis_url=settings.redis_url)
    idempotency = IdempotentRequests(design, unprotected=NoIdempotency(pool, publish=publish), faults=faults,
                                     unavailable=UNAVAILABLE_ERRORS)

    metrics.gauge("saaslab_scheduler_slots", "Request slots the scheduler hands out", lambda: gate.scheduler.slots)
    metrics.gauge("saaslab_scheduler_busy_slots", "Slots held by running requests", lambda: gate.busy)
    metrics.gauge("saaslab_scheduler_queued_requests", "Requests waiting for a slot", gate.queued)
    metrics.counter("saaslab_scheduler_waits_total", "Requests that found no free slot and queued",
                    lambda: gate.waits)
    metrics.counter("saaslab_scheduler_wait_seconds", "Time granted requests spent queued for a slot, summed",
                    lambda: gate.wait_seconds)
    metrics.counter("saaslab_scheduler_holds", "Slots given back", lambda: gate.holds)
    metrics.counter("saaslab_scheduler_hold_seconds", "Slot holds, grant to release, summed",
                    lambda: gate.hold_seconds)
    metrics.counter("saaslab_scheduler_hold_seconds_squared", "Squares of the slot holds in seconds, summed",
                    lambda: gate.hold_seconds_squared)

    if limiter is not None:
        metrics.counter_family("saaslab_ratelimit_decisions_total", "Rate-limit decisions by outcome", "outcome",
                               lambda: limiter.outcomes)
        metrics.counter("saaslab_ratelimit_redis_calls_total", "Limiter calls the circuit breaker let through to Redis",
                        lambda: limiter.redis_calls)
        metrics.gauge("saaslab_ratelimit_breaker_open", "1 while the limiter's circuit breaker keeps calls off Redis",
                      lambda: float(limiter.breaker.state.name != "closed"))

    metrics.counter_family("saaslab_idempotency_decisions_total",
                           "POSTs under /v1 by idempotency outcome (replay, conflict, mismatch, execute, recover, "
                           "no_key, invalid_key)", "outcome", lambda: idempotency.decisions)
    metrics.counter("saaslab_idempotency_provider_timeouts_total",
                    "Payments answered 504 because the provider's answer was lost (nothing stored)",
                    lambda: idempotency.provider_timeouts)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await pool.open(timeout_s=30.0)
        try:
            await migrate(pool, MIGRATIONS)
            await idempotency.load()
            if worker:
                settle_gc()
            yield
        finally:
            await idempotency.close()
            await per_request.close()
            await admission.close()
            await redis_client.aclose()
            await pool.close()

    app = FastAPI(title="saaslab reference service", version="1", lifespan=lifespan, **_NO_NATIVE_TELEMETRY)
    app.state.settings = settings
    app.state.admin_token = admin_token
    app.state.gate = gate
    app.state.faults = faults
    app.state.store = store
    app.state.idempotency = idempotency

    # FastAPI tries routes in order: the hot /v1 routes go first.
    routers = [tenant_router(store, gate, faults, idempotency), _ops_router(pool, redis_client, metrics),
               admin_router(directory, store, require_admin)]
    if settings.lab_mode:
        routers.append(faults_router(faults, require_admin))
    install_problem_handlers(app, UNAVAILABLE_ERRORS, allow=allowed_methods(routers))
    for router in routers:
        app.include_router(router)

    # add_middleware wraps: the last added runs first.
    app.add_middleware(IdempotencyKeyMiddleware, requests=idempotency)
    app.add_middleware(ConcurrencyMiddleware, control=admission.concurrency)
    app.add_middleware(TenantAuthMiddleware, resolver=directory, per_request=per_request)
    if admission.shedding is not None:
        app.add_middleware(LoadSheddingMiddleware, shedding=admission.shedding)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ErrorMiddleware, unavailable_errors=UNAVAILABLE_ERRORS)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _ops_router(pool: Pool, redis_client: Redis, metrics: Metrics) -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @router.get("/readyz")
    async def readyz() -> Response:
        try:
            await asyncio.wait_for(asyncio.gather(ping(pool, READY_TIMEOUT_S), redis_client.ping()),
                                   timeout=READY_TIMEOUT_S)
        except Exception as exc:  # whatever the failure, the answer is "not ready"
            raise unavailable(f"PostgreSQL or Redis did not answer within {READY_TIMEOUT_S:g} s "
                              f"({type(exc).__name__}).") from None
        return JSONResponse({"status": "ready"})

    @router.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def bench_bare(_request: Request) -> Response:
        """The benchmark's baseline: same app, middleware and route class as the hot /v1 routes;
        no auth, Redis, database or scheduler."""
        return Response(BARE_BODY, media_type="application/json")

    router.add_api_route("/bench/bare", bench_bare, methods=["GET"], route_class_override=DirectRoute)
    return router


def app_from_env() -> FastAPI:
    """ASGI factory for uvicorn workers: settings from `SAASLAB_*`, else the running embedded servers."""
    settings = Settings()
    if not (settings.database_url and settings.redis_url):
        running = EmbeddedServices(settings.state_dir).running()
        if running is None:
            raise RuntimeError("no SAASLAB_DATABASE_URL / SAASLAB_REDIS_URL and no embedded servers running; "
                               "set both, run `saaslab services up`, or start with `saaslab serve`")
        settings = settings.model_copy(update={"database_url": settings.database_url or running.database_url,
                                               "redis_url": settings.redis_url or running.redis_url})
    return create_app(settings, worker=True)
