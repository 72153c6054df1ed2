"""The reference service. `create_app(settings)` is the one place that wires everything.

Run it with `saaslab serve`, or `uvicorn reference_impl.app:app_from_env --factory` with the
`SAASLAB_*` environment set (or the embedded servers up: `saaslab services up`).

The app owns what every request shares: pools, metrics, lab-mode faults, the admin guard, its own
routes (health, readiness, metrics) and its own middleware. Each pattern with a service face in the
registry (saaslab/patterns/) adds the rest through `install(ctx) -> ServiceParts`
(reference_impl/common/service.py): routers, migrations, fault points, metrics, middleware,
lifespan hooks. Patterns meet through the context (one provides, another needs), never by
importing each other's service code.

Requests pass, outermost first: MetricsMiddleware, ErrorMiddleware, BodyLimitMiddleware, the
patterns' outer middleware (ratelimit's LoadSheddingMiddleware, with `SAASLAB_SHED_CAPACITY`),
TenantAuthMiddleware (only /v1; its API-key resolver and its one Redis round trip, `PerRequest`,
come from the patterns), then the patterns' middleware in registry order (ratelimit's
ConcurrencyMiddleware, for tenants with `limits.concurrency`; idempotency's
IdempotencyKeyMiddleware, only POST under /v1), then FastAPI's router. All are pure ASGI. POST
routes claim their Idempotency-Key themselves, through the design chosen by `SAASLAB_IDEMPOTENCY`
(reference_impl/idempotency/http.py says why).

A worker started from the environment (`app_from_env`: uvicorn, `saaslab serve`) also settles the
garbage collector once it is up (`settle_gc`): the start-up heap is frozen out of the collector's
way and the young generation gets room for the objects in-flight requests keep alive, so the hot
path does not pay for a collection every few requests.

`GET /admin/config` (admin token) answers the settings the service runs with, secrets and URLs left out
(`SERVED_SETTINGS`), so a client that did not start it (`saaslab load P --host URL`) can model what
it measures instead of assuming.

`GET /bench/bare` is the benchmark's baseline: a tiny JSON answer through the same middleware but
without auth, Redis, PostgreSQL or the scheduler, to compare `GET /v1/projects/{id}` against.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import redis.exceptions
from fastapi import APIRouter, Depends, FastAPI
from pydantic import BaseModel, create_model
from redis.asyncio import Redis
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from reference_impl.common.auth import TenantAuthMiddleware, TenantResolver, admin_guard
from reference_impl.common.db import DB_UNAVAILABLE_ERRORS, Pool, make_pool, migrate, ping
from reference_impl.common.faults import CLEAR_ALL, Faults, faults_channel, faults_router, follow_clears
from reference_impl.common.metrics import Metrics
from reference_impl.common.middleware import BodyLimitMiddleware, ErrorMiddleware, MetricsMiddleware
from reference_impl.common.per_request import PerRequest
from reference_impl.common.problem import (
    PROBLEM_RESPONSES,
    allowed_methods,
    install_problem_handlers,
    unavailable,
)
from reference_impl.common.redis_client import make_redis, sentinel_master
from reference_impl.common.routing import DirectRoute
from reference_impl.common.service import ServiceContext, ServiceParts
from saaslab import patterns
from saaslab.services import EmbeddedServices
from saaslab.settings import Settings

SERVICE_FACES = tuple(p.module("service") for p in patterns.with_face("service"))
"""Every registered pattern's service face (reference_impl/<pattern>/wiring.py), in registry order."""
MIGRATIONS: tuple[Path, ...] = tuple(path for face in SERVICE_FACES for path in getattr(face, "MIGRATIONS", ()))
"""The service's SQL migrations, every pattern's in registry order; also what the completer and reaper apply."""
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


UNSERVED_SETTINGS = frozenset({"admin_token", "database_url", "redis_url", "failover_members"})
"""Settings `GET /admin/config` never answers: a secret, and URLs that may carry credentials."""
SERVED_SETTINGS: type[BaseModel] = create_model(
    "ServedSettings", __doc__="The settings the service runs with (`SAASLAB_<NAME>`), secrets and URLs left out.",
    **{name: (field.annotation, ...) for name, field in Settings.model_fields.items() if name not in UNSERVED_SETTINGS})
"""Every setting but `UNSERVED_SETTINGS`, built from `Settings`, so a new pattern's settings appear unasked."""


def settle_gc() -> None:
    """Once start-up is done: freeze the heap it built and give the young generation room.

    The start-up heap (routes, pydantic validators, drivers, the connections just opened) lives as
    long as the process; `gc.freeze` moves it out of the collector's reach, so an older-generation
    collection does not walk all of it. On the hot path of `GET /v1/projects/{id}` (bench/tenancy.py's
    load) collection costs about 12 µs per request without this and nearly none with it.
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
    faults = Faults({}, metrics)
    pool = make_pool(settings)
    redis_client = make_redis(settings)
    ctx = ServiceContext(settings, pool, redis_client, metrics, faults, admin_guard(admin_token), UNAVAILABLE_ERRORS)
    installed: list[ServiceParts] = [face.install(ctx) for face in SERVICE_FACES]
    for parts in installed:
        faults.declare(parts.fault_points)
        metrics.register(*parts.metrics)
    # The request's one Redis round trip: a pattern's (the rate limiter's) if one provides it, else usage only.
    per_request = ctx.find(PerRequest) or PerRequest(settings.redis_url, settings.redis_prefix,
                                                          sentinel=sentinel_master(settings))
    on_start = [hook for parts in installed for hook in parts.on_start]
    on_stop = [hook for parts in reversed(installed) for hook in parts.on_stop]
    channel = faults_channel(settings.redis_prefix)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await pool.open(timeout_s=30.0)
        following: asyncio.Task[None] | None = None
        try:
            await migrate(pool, MIGRATIONS)
            for start in on_start:
                await start()
            if settings.lab_mode:  # a DELETE /admin/faults on any worker clears this one too
                following = asyncio.create_task(follow_clears(faults, settings.redis_url or "", channel))
            if worker:
                settle_gc()
            yield
        finally:
            if following is not None:
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await following
            for stop in on_stop:
                await stop()
            await per_request.close()
            await redis_client.aclose()
            await pool.close()

    middleware = [
        Middleware(MetricsMiddleware, metrics=metrics),
        Middleware(ErrorMiddleware, unavailable_errors=UNAVAILABLE_ERRORS),
        Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
        *(layer for parts in installed for layer in parts.outer_middleware),
        Middleware(TenantAuthMiddleware, resolver=ctx.need(TenantResolver), per_request=per_request),
        *(layer for parts in installed for layer in parts.middleware),
    ]
    app = FastAPI(title="saaslab reference service", version="1", lifespan=lifespan, middleware=middleware,
                  **_NO_NATIVE_TELEMETRY)
    app.state.settings = settings
    app.state.admin_token = admin_token
    app.state.faults = faults
    app.state.metrics = metrics
    for parts in installed:
        for name, value in parts.state.items():
            setattr(app.state, name, value)

    # FastAPI tries routes in order: the hot /v1 routes go first.
    routes = [parts.routes() for parts in installed]
    routers = [*(r for rs in routes for r in rs.hot), _ops_router(pool, redis_client, metrics),
               _config_router(settings, ctx.require_admin),
               *(r for rs in routes for r in rs.rest)]
    if settings.lab_mode:
        routers.append(faults_router(faults, ctx.require_admin,
                                     clear_everywhere=lambda: redis_client.publish(channel, CLEAR_ALL)))
    install_problem_handlers(app, UNAVAILABLE_ERRORS, allow=allowed_methods(routers))
    for router in routers:
        app.include_router(router)
    return app


def _ops_router(pool: Pool, redis_client: Redis, metrics: Metrics) -> APIRouter:
    router = APIRouter(tags=["ops"], responses=PROBLEM_RESPONSES)

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

    @router.get("/metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def bench_bare(_request: Request) -> Response:
        """The benchmark's baseline: same app, middleware and route class as the hot /v1 routes;
        no auth, Redis, database or scheduler."""
        return Response(BARE_BODY, media_type="application/json")

    router.add_api_route("/bench/bare", bench_bare, methods=["GET"], route_class_override=DirectRoute)
    return router


def _config_router(settings: Settings, require_admin: Callable[..., Awaitable[None]]) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                       responses=PROBLEM_RESPONSES)
    served = SERVED_SETTINGS.model_validate(settings.model_dump(exclude=set(UNSERVED_SETTINGS)))

    @router.get("/config", response_model=SERVED_SETTINGS)
    async def served_config() -> BaseModel:
        """The settings this worker runs with: what shapes results (designs, slots, limits, lab mode)."""
        return served

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
