"""Rate limiting on Redis: the decision cores of `core.py` as atomic Lua scripts, one EVALSHA each.

`RedisRateLimiter` is the one limiter adapter: the service (`service.RateLimitService`), the parity
tests and the benchmark (`bench/ratelimit.py`) all run it. Its `decide` is the whole per-request
cost: one round trip that decides, updates the limiter state with its TTL and counts the request
in the tenant's usage for the period (allowed or not), so `GET /v1/usage` costs the hot path
nothing extra. A call's keys and arguments are built in one place, `invocation`; `prepare` packs
them once, so the service can reuse the packed command for a tenant all month (`send`). Each
algorithm's script (`<algorithm>.lua`, with `prelude.lua` in front) is the twin of its Python core;
the parity test replays traces through both and requires identical decisions. A state of several
integers is one STRING of packed int64s (`PACKED_STATES`), read with GET and written with `SET ... PX`.

Every adapter here talks to Redis through its own `ScriptRunner` (reference_impl/common/redis_client.py):
one auto-pipelined hiredis connection, calls made in one loop turn leaving in one write.

The clock: pass `now_us` (the app's clock, which lets tests replay traces), or leave it None and
the script reads Redis's own `TIME`, so app servers whose clocks disagree still share one clock.

Keys carry the tenant as a hash tag, so a Redis Cluster keeps all of a tenant's keys in one slot:
`{prefix}:{{tenant}}:rl:{STATE_LAYOUT}:{algorithm}[:{route_class}]` and `{prefix}:{{tenant}}:usage:{YYYY-MM}`.

`NaiveRedisRateLimiter` is the deliberately unsafe design: it reads the state, decides in Python
and writes it back in a second round trip, so concurrent requests read the same count and all
pass. `RedisConcurrencyLimiter` bounds requests in flight per tenant with expiring leases
(`concurrency.lua`, the twin of `core.acquire`).
"""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from reference_impl.common.redis_client import ScriptRunner, SentinelMaster
from reference_impl.common.usage import usage_key, usage_period
from reference_impl.ratelimit.core import (
    ALGORITHMS,
    STRICT_ALGORITHMS,
    FixedWindowState,
    GcraState,
    Leases,
    Policy,
    SlidingCounterState,
    SlidingLogState,
    TokenBucketState,
    fixed_window,
)

SCRIPT_DIR = Path(__file__).parent
USAGE_TTL_S = 62 * 24 * 3600
"""Usage counters outlive their month long enough to bill it afterwards."""
TTL_SLACK_MS = 1000
"""Extra life of a limiter key past the moment its state stops mattering (app clocks run ahead)."""
USE_REDIS_TIME = -1
PACKED_STATES: dict[str, tuple[struct.Struct, type]] = {
    "fixed_window": (struct.Struct("<qq"), FixedWindowState),
    "naive": (struct.Struct("<qq"), FixedWindowState),
    "sliding_counter": (struct.Struct("<qqq"), SlidingCounterState),
    "token_bucket": (struct.Struct("<qq"), TokenBucketState),
}
"""The STRING layouts of the states of several integers: the core state's fields in order, as
little-endian int64s (the scripts' `struct.pack('<i8i8...')`)."""


STATE_LAYOUT = "v2"
"""The version of the state layout in the limiter keys (v2: packed STRINGs, v1 was HASHes). During a rolling
deploy that changes it, old and new servers keep apart states rather than fail on each other's (WRONGTYPE,
which the service would answer by its failure policy): a tenant may then be admitted by both for one window."""


def limiter_key(prefix: str, tenant_id: str, algorithm: str, route_class: str | None = None) -> str:
    key = f"{prefix}:{{{tenant_id}}}:rl:{STATE_LAYOUT}:{algorithm}"
    return f"{key}:{route_class}" if route_class else key


def script_source(name: str) -> str:
    """`<name>.lua` with the shared prelude in front: the text SCRIPT LOAD receives."""
    return (SCRIPT_DIR / "prelude.lua").read_text() + "\n" + (SCRIPT_DIR / f"{name}.lua").read_text()


@dataclass(frozen=True, slots=True)
class LimitResult:
    """A decision as the service sees it; durations in µs from the decision's clock."""

    allowed: bool
    remaining: int
    reset_us: int
    retry_after_us: int
    usage: int
    """The tenant's request count for the current period, this request included."""
    decided_us: int = 0
    """The limiter's clock at the decision, µs (Redis TIME or the caller's `now_us`), as
    `invariants.decision_time` defines it: what the checker judges windows and refill on."""


class LimitCall(NamedTuple):
    """One `decide` call, for `decide_many`."""

    tenant_id: str
    policy: Policy
    now_us: int | None = None
    cost: int = 1
    route_class: str | None = None


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """A concurrency lease for the limiter's script to take when it admits the request (prelude.lua's
    `finish`): one round trip for both limiters."""

    lease_id: str
    limit: int
    lease_us: int


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """One limiter call's keys and arguments, and its EVALSHA command packed once."""

    keys: tuple[str, ...]
    args: tuple[int | str, ...]
    packed: bytes


class RateLimiter(Protocol):
    """What the service calls, whichever design the settings pick (`make_limiter`)."""

    algorithm: str

    async def load(self) -> None: ...

    async def close(self) -> None: ...

    async def decide(self, tenant_id: str, policy: Policy, now_us: int | None = None, cost: int = 1,
                     route_class: str | None = None) -> LimitResult: ...

    async def state(self, tenant_id: str, route_class: str | None = None) -> Any: ...


class RedisRateLimiter:
    """A strict algorithm decided atomically in Redis, one EVALSHA per request, through a `ScriptRunner`."""

    def __init__(self, redis_url: str, prefix: str, algorithm: str, *, ttl_slack_ms: int = TTL_SLACK_MS,
                 usage_ttl_s: int = USAGE_TTL_S, sentinel: SentinelMaster | None = None) -> None:
        if algorithm not in STRICT_ALGORITHMS:
            raise ValueError(f"no Lua script for {algorithm!r}; choose one of {', '.join(STRICT_ALGORITHMS)}")
        self.prefix = prefix
        self.algorithm = algorithm
        self.runner = ScriptRunner(redis_url, script_source(algorithm), sentinel=sentinel)
        self._tail = (ttl_slack_ms, usage_ttl_s)

    async def load(self) -> None:
        await self.runner.load()

    async def close(self) -> None:
        await self.runner.close()

    def invocation(self, tenant_id: str, policy: Policy, period: str, now_us: int = USE_REDIS_TIME, cost: int = 1,
                   route_class: str | None = None, lease: LeaseRequest | None = None
                   ) -> tuple[tuple[str, ...], tuple[int | str, ...]]:
        """The script's keys and arguments (the layout `prelude.lua` and `<algorithm>.lua` read):
        the limiter key and the usage counter of `period`; now_us (-1: Redis TIME), requests,
        window_us, cost, ttl_slack_ms, usage_ttl_s. With `lease`, also the tenant's lease ZSET and
        lease_id, limit, lease_us."""
        policy.check_cost(cost)
        keys = (limiter_key(self.prefix, tenant_id, self.algorithm, route_class),
                usage_key(self.prefix, tenant_id, period))
        args = (now_us, policy.requests, policy.window_us, cost, *self._tail)
        if lease is None:
            return keys, args
        if lease.limit < 1 or lease.lease_us < 1:
            raise ValueError("a lease's limit and lease_us must be >= 1")
        return ((*keys, concurrency_key(self.prefix, tenant_id, route_class)),
                (*args, lease.lease_id, lease.limit, lease.lease_us))

    def prepare(self, tenant_id: str, policy: Policy, period: str, now_us: int = USE_REDIS_TIME, cost: int = 1,
                route_class: str | None = None, lease: LeaseRequest | None = None) -> PreparedCall:
        keys, args = self.invocation(tenant_id, policy, period, now_us, cost, route_class, lease)
        return PreparedCall(keys, args, self.runner.pack(keys, args))

    def send(self, call: PreparedCall) -> asyncio.Future[Any]:
        """The raw reply of one call, as a future (the service puts its own deadline on it); `result` reads it."""
        return self.runner.call_packed(call.packed, call.keys, call.args)

    def _prepare(self, call: LimitCall) -> PreparedCall:
        if call.now_us is None:
            return self.prepare(call.tenant_id, call.policy, usage_period(time.time()), USE_REDIS_TIME, call.cost,
                                call.route_class)
        if call.now_us < 0:
            raise ValueError(f"now_us must be >= 0 (or None for Redis TIME), got {call.now_us}")
        return self.prepare(call.tenant_id, call.policy, usage_period(call.now_us / 1e6), call.now_us, call.cost,
                            call.route_class)

    async def decide(self, tenant_id: str, policy: Policy, now_us: int | None = None, cost: int = 1,
                     route_class: str | None = None) -> LimitResult:
        return result(await self.send(self._prepare(LimitCall(tenant_id, policy, now_us, cost, route_class))))

    async def decide_and_lease(self, tenant_id: str, policy: Policy, lease: LeaseRequest, now_us: int,
                               cost: int = 1) -> tuple[LimitResult, ConcurrencyResult | None]:
        """One decision that also takes `lease` when it admits (None when the limiter refused): the call
        the service makes for a tenant with `limits.concurrency` (service.py), as one method for the parity tests."""
        call = self.prepare(tenant_id, policy, usage_period(now_us / 1e6), now_us, cost, lease=lease)
        return leased_result(await self.send(call), lease.lease_id)

    async def decide_many(self, calls: Sequence[LimitCall]) -> list[LimitResult]:
        """Many decisions sent together (one write), applied in order (replays)."""
        sent = [self.send(self._prepare(c)) for c in calls]
        return [result(r) for r in await asyncio.gather(*sent)]

    async def state(self, tenant_id: str, route_class: str | None = None) -> Any:
        """The limiter state as stored, in the core's form (None when absent)."""
        return await read_state(self.runner, limiter_key(self.prefix, tenant_id, self.algorithm, route_class),
                                self.algorithm)


def result(reply: Sequence[int]) -> LimitResult:
    """A limiter script's reply {allowed, remaining, reset_us, retry_after_us, usage, decided_us}."""
    allowed, remaining, reset_us, retry_after_us, usage, decided_us = reply  # hiredis gives ints
    return LimitResult(allowed == 1, remaining, reset_us, retry_after_us, usage, decided_us)


def leased_result(reply: Sequence[int], lease_id: str) -> tuple[LimitResult, ConcurrencyResult | None]:
    """The reply of a call with a `LeaseRequest`: the decision, and the lease when the limiter admitted."""
    decision = result(reply[:6])
    if len(reply) == 6:
        return decision, None
    leased, in_flight, retry = reply[6:]
    return decision, ConcurrencyResult(leased == 1, in_flight, retry, lease_id)


async def read_state(runner: ScriptRunner, key: str, algorithm: str) -> Any:
    """Read a limiter key into its core state; the inverse of what the scripts write."""
    if algorithm in PACKED_STATES:
        layout, state = PACKED_STATES[algorithm]
        packed = await runner.command("GET", key)
        return None if packed is None else state(*layout.unpack(packed))
    if algorithm == "gcra":
        tat = await runner.command("GET", key)
        return None if tat is None else GcraState(int(tat))
    if algorithm == "sliding_log":
        entries = await runner.command("LRANGE", key, 0, -1)
        return SlidingLogState(tuple(int(e) for e in entries)) if entries else None
    raise ValueError(f"unknown rate-limit algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")


class NaiveRedisRateLimiter:
    """The unsafe design: GET the count, decide in Python, SET it back, in two round trips.

    The state is stored as `fixed_window`'s script stores it, so the two differ only in atomicity.

    Between the read and the write other requests read the same count, so under concurrency it
    admits more than the policy allows; `invariants.no_over_admission` catches it. `race_delay_s`
    stands in for a slower network between the two round trips (a local Redis answers in tens of
    µs, which makes the race window narrow, not absent). With `now_us` None it uses the app's clock:
    reading Redis's TIME would be a third round trip.
    """

    algorithm = "naive"

    def __init__(self, redis_url: str, prefix: str, *, race_delay_s: float = 0.0,
                 ttl_slack_ms: int = TTL_SLACK_MS, usage_ttl_s: int = USAGE_TTL_S,
                 sentinel: SentinelMaster | None = None) -> None:
        self.prefix = prefix
        self.race_delay_s = race_delay_s
        self.runner = ScriptRunner(redis_url, "", sentinel=sentinel)
        self._ttl_slack_ms = ttl_slack_ms
        self._usage_ttl_s = usage_ttl_s

    async def load(self) -> None:
        """Nothing to load: this design runs no script."""

    async def close(self) -> None:
        await self.runner.close()

    async def decide(self, tenant_id: str, policy: Policy, now_us: int | None = None, cost: int = 1,
                     route_class: str | None = None) -> LimitResult:
        now = time.time_ns() // 1000 if now_us is None else now_us
        key = limiter_key(self.prefix, tenant_id, self.algorithm, route_class)
        ukey = usage_key(self.prefix, tenant_id, usage_period(now / 1e6))
        layout, _ = PACKED_STATES[self.algorithm]
        # Both reads leave in one write: one round trip.
        packed, used = await asyncio.gather(self.runner.command("GET", key), self.runner.command("INCR", ukey))
        if self.race_delay_s > 0:
            await asyncio.sleep(self.race_delay_s)
        state = None if packed is None else FixedWindowState(*layout.unpack(packed))
        d = fixed_window(state, now, policy, cost)
        writes = [self.runner.command("SET", key, layout.pack(d.state.window_start_us, d.state.count),
                                      "PX", -(-d.reset_us // 1000) + self._ttl_slack_ms)]
        if used == 1:
            writes.append(self.runner.command("EXPIRE", ukey, self._usage_ttl_s))
        await asyncio.gather(*writes)
        return LimitResult(d.allowed, d.remaining, d.reset_us, d.retry_after_us, int(used),
                           max(now, d.state.window_start_us))

    async def state(self, tenant_id: str, route_class: str | None = None) -> Any:
        return await read_state(self.runner, limiter_key(self.prefix, tenant_id, self.algorithm, route_class),
                                self.algorithm)


def make_limiter(redis_url: str, prefix: str, algorithm: str, **options: Any) -> RateLimiter:
    """The adapter for a design name (`core.ALGORITHMS`): the one factory the service, tests and bench use."""
    if algorithm == "naive":
        return NaiveRedisRateLimiter(redis_url, prefix, **options)
    return RedisRateLimiter(redis_url, prefix, algorithm, **options)


# ---------------------------------------------------------------------------------------------
# Concurrent requests


def concurrency_key(prefix: str, tenant_id: str, route_class: str | None = None) -> str:
    return limiter_key(prefix, tenant_id, "concurrency", route_class)


@dataclass(frozen=True, slots=True)
class ConcurrencyResult:
    allowed: bool
    in_flight: int
    retry_after_us: int
    lease_id: str
    """Pass it to `release` when the request ends."""


class RedisConcurrencyLimiter:
    """At most `limit` requests in flight per tenant: a ZSET of leases, acquired atomically in Lua
    (`concurrency.lua`, the twin of `core.acquire`) and released with one ZREM.

    A lease expires after `lease_us`, so a worker that crashes mid-request gives its slot back;
    set it above the longest request the service allows.
    """

    def __init__(self, redis_url: str, prefix: str, *, lease_us: int, ttl_slack_ms: int = TTL_SLACK_MS,
                 sentinel: SentinelMaster | None = None) -> None:
        if lease_us < 1:
            raise ValueError("lease_us must be >= 1")
        self.prefix = prefix
        self.lease_us = lease_us
        self._ttl_slack_ms = ttl_slack_ms
        self.runner = ScriptRunner(redis_url, script_source("concurrency"), sentinel=sentinel)

    async def load(self) -> None:
        await self.runner.load()

    async def close(self) -> None:
        await self.runner.close()

    def invocation(self, tenant_id: str, limit: int, lease_id: str, now_us: int = USE_REDIS_TIME,
                   route_class: str | None = None) -> tuple[tuple[str], tuple[int | str, ...]]:
        """`concurrency.lua`'s keys and arguments: the lease ZSET; now_us (-1: Redis TIME), lease_id,
        limit, lease_us, ttl_slack_ms."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        return ((concurrency_key(self.prefix, tenant_id, route_class),),
                (now_us, lease_id, limit, self.lease_us, self._ttl_slack_ms))

    async def acquire(self, tenant_id: str, limit: int, *, lease_id: str | None = None,
                      now_us: int | None = None, route_class: str | None = None) -> ConcurrencyResult:
        lease = lease_id or uuid.uuid4().hex
        keys, args = self.invocation(tenant_id, limit, lease, USE_REDIS_TIME if now_us is None else now_us,
                                     route_class)
        allowed, in_flight, retry = await self.runner(keys, args)
        return ConcurrencyResult(allowed == 1, in_flight, retry, lease)

    async def release(self, tenant_id: str, lease_id: str, *, route_class: str | None = None) -> bool:
        """Give the slot back; False if the lease had already expired (or was never held)."""
        return bool(await self.runner.command("ZREM", concurrency_key(self.prefix, tenant_id, route_class), lease_id))

    async def leases(self, tenant_id: str, route_class: str | None = None) -> Leases:
        """The leases as stored, in the core's form: what the parity tests compare with `core.acquire`."""
        flat = await self.runner.command("ZRANGE", concurrency_key(self.prefix, tenant_id, route_class), 0, -1,
                                         "WITHSCORES")
        return Leases(tuple(sorted((int(flat[i + 1]), flat[i].decode()) for i in range(0, len(flat), 2))))
