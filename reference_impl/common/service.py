"""What a pattern's service face gets from the app and gives back: `install(ctx) -> ServiceParts`.

`create_app` (reference_impl/app.py) makes one `ServiceContext` (settings, pools, metrics, faults,
the admin guard), calls `install` of every pattern with a service face (saaslab/patterns/, in
registry order), and wires what each returns: fault points, metrics, middleware, lifespan hooks,
`app.state` entries, and last the routers. A face module also lists its SQL migrations as a module
constant `MIGRATIONS` (paths, applied in registry order), not in its parts: the completer, the
reaper and tests migrate a database without building a service.

Patterns never import each other's service code to meet: one *provides* an object under a key
(`ctx.provide(TenantResolver, directory)`) and another *needs* it (`ctx.need(TenantResolver)`).
Keys are the classes or protocols the object is typed by. Two patterns may need something of each
other (tenancy's /v1 routes run POSTs through idempotency, idempotency publishes payments to
tenancy's store), so routers are built in a second step: `ServiceParts.routes` is called once every
pattern is installed, and `need` works there for whatever any pattern provided. Everything is
resolved while the app is built; a request never looks anything up in the context.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast
from uuid import UUID

from fastapi import APIRouter, Request
from redis.asyncio import Redis
from starlette.middleware import Middleware

from reference_impl.common.db import PipelinedReads, Pool
from reference_impl.common.faults import Faults
from reference_impl.common.metrics import Metrics, Reading
from saaslab.settings import Settings

T = TypeVar("T")
Hook = Callable[[], Awaitable[None]]


@dataclass
class ServiceContext:
    """What the app shares with every pattern while it is built."""

    settings: Settings
    pool: Pool
    redis: Redis
    """The app's general Redis client (readiness, tooling); hot paths use their own `ScriptRunner`."""
    metrics: Metrics
    faults: Faults
    require_admin: Callable[[Request], Awaitable[None]]
    """A dependency admitting only the admin token."""
    unavailable_errors: tuple[type[Exception], ...]
    """Exceptions meaning a backing service failed: the app answers them 503."""
    _provided: dict[object, object] = field(default_factory=dict, repr=False)

    def provide(self, key: type[T], value: T) -> None:
        """Offer `value` to the other patterns under `key` (one provider per key)."""
        if key in self._provided:
            raise ValueError(f"{_name(key)} is provided twice")
        self._provided[key] = value

    def find(self, key: type[T]) -> T | None:
        """What some pattern provided under `key`, or None."""
        return cast("T | None", self._provided.get(key))

    def need(self, key: type[T]) -> T:
        """What some pattern provided under `key`; a LookupError names what is missing."""
        value = self.find(key)
        if value is None:
            raise LookupError(f"no installed pattern provides {_name(key)}; provided: "
                              f"{', '.join(_name(k) for k in self._provided) or 'nothing'}")
        return value


def _name(key: object) -> str:
    return getattr(key, "__qualname__", repr(key))


@dataclass(frozen=True)
class Routes:
    """A pattern's routers. FastAPI tries routes in order: every pattern's `hot` routers come first
    (the /v1 routes the benchmarks load), then the app's own (health, metrics), then every `rest`."""

    hot: Sequence[APIRouter] = ()
    rest: Sequence[APIRouter] = ()


@dataclass(frozen=True)
class ServiceParts:
    """What one pattern adds to the service; every field may be left out."""

    routes: Callable[[], Routes] = Routes
    """Called once every pattern is installed (see the module docstring)."""
    middleware: Sequence[Middleware] = ()
    """Pure-ASGI layers, outermost first. They run inside the app's own layers (metrics, errors,
    body limit, tenant auth: a /v1 request has its tenant and admission in its scope by then), and
    the patterns' layers nest in registry order."""
    outer_middleware: Sequence[Middleware] = ()
    """Pure-ASGI layers that run before tenant auth (inside metrics, errors and body limit): a layer
    that refuses requests wholesale (the load shedder) does so before auth spends a Redis round trip."""
    fault_points: Mapping[str, str] = field(default_factory=dict)
    """Lab-mode fault points, each with what a fault there does."""
    metrics: Sequence[Reading] = ()
    on_start: Sequence[Hook] = ()
    """Run once the pool is open and migrated, in registry order."""
    on_stop: Sequence[Hook] = ()
    """Run at shutdown in reverse registry order, before the app closes its pools."""
    state: Mapping[str, Any] = field(default_factory=dict)
    """Put on `app.state` for tests and tooling (`app.state.gate`)."""


class RecordedPayment(Protocol):
    """A payment the idempotency ledger recorded, as the payments resource shows it."""

    @property
    def id(self) -> UUID: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def amount(self) -> int: ...
    @property
    def currency(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...


class PaymentSink(Protocol):
    """Publishes a recorded payment to the tenant's payments resource; idempotent (a recovered
    request publishes again). Tenancy provides it, idempotency needs it (reference_impl/*/wiring.py)."""

    def __call__(self, payment: RecordedPayment, /) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class ShardRoute:
    """Where one tenant's rows are now: its shard's pool and pipelined reads, and the placement's epoch."""

    shard: int
    epoch: int
    pool: Pool
    reads: PipelinedReads


class TenantShards(Protocol):
    """Routes a tenant's queries to its shard. Sharding provides it when shards are configured; tenancy's store
    asks it for every query (without it, every tenant's rows are in the main database).

    `cached` answers without awaiting when it can (the hot path); `route` always answers. A write a shard
    refuses because the tenant is fenced there (moving away, or moved) raises an error `refused` recognises:
    the caller awaits `refused(tenant_id, error)` and, when it returns True, routes again and retries (the
    placement was invalidated and the new one may take a moment to settle); False means it was another error.
    """

    def cached(self, tenant_id: str) -> ShardRoute | None: ...
    async def route(self, tenant_id: str) -> ShardRoute: ...
    async def refused(self, tenant_id: str, error: BaseException) -> bool: ...
