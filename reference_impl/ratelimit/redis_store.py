"""Rate limiting on Redis: the decision cores of `core.py` as atomic Lua scripts, one EVALSHA each.

`RedisRateLimiter.decide` is the whole per-request cost: one round trip that decides, updates the
limiter state with its TTL and counts the request in the tenant's usage for the period (allowed
or not), so `GET /v1/usage` costs the hot path nothing extra. Each algorithm's script
(`<algorithm>.lua`, with `prelude.lua` in front) is the twin of its Python core; the parity test
replays traces through both and requires identical decisions. A state of several integers is one
STRING of packed int64s (`PACKED_STATES`), read with GET and written with `SET ... PX`.

The clock: pass `now_us` (the app's clock, which lets tests replay traces), or leave it None and
the script reads Redis's own `TIME`, so app servers whose clocks disagree still share one clock.

Keys carry the tenant as a hash tag, so a Redis Cluster keeps all of a tenant's keys in one slot:
`{prefix}:{{tenant}}:rl:{STATE_LAYOUT}:{algorithm}[:{route_class}]` and `{prefix}:{{tenant}}:usage:{YYYY-MM}`.

`NaiveRedisRateLimiter` is the deliberately unsafe design: it reads the state, decides in Python
and writes it back in a second round trip, so concurrent requests read the same count and all
pass. `RedisConcurrencyLimiter` bounds requests in flight per tenant with expiring leases.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

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


class Script:
    """A Lua script run by SHA: EVALSHA, and on NOSCRIPT (a restarted or flushed Redis) load it and retry."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def load(self, redis: Redis) -> None:
        await redis.script_load(self.source)

    async def __call__(self, redis: Redis, keys: Sequence[str], args: Sequence[int | str]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load(redis)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


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


class RateLimiter(Protocol):
    """What the service calls, whichever design the settings pick (`make_limiter`)."""

    algorithm: str

    async def load(self) -> None: ...

    async def decide(self, tenant_id: str, policy: Policy, now_us: int | None = None, cost: int = 1,
                     route_class: str | None = None) -> LimitResult: ...

    async def state(self, tenant_id: str, route_class: str | None = None) -> Any: ...


class RedisRateLimiter:
    """A strict algorithm decided atomically in Redis, one EVALSHA per request."""

    def __init__(self, redis: Redis, prefix: str, algorithm: str, *, ttl_slack_ms: int = TTL_SLACK_MS,
                 usage_ttl_s: int = USAGE_TTL_S) -> None:
        if algorithm not in STRICT_ALGORITHMS:
            raise ValueError(f"no Lua script for {algorithm!r}; choose one of {', '.join(STRICT_ALGORITHMS)}")
        self.redis = redis
        self.prefix = prefix
        self.algorithm = algorithm
        self.script = Script(script_source(algorithm))
        self._tail = (ttl_slack_ms, usage_ttl_s)

    async def load(self) -> None:
        """SCRIPT LOAD once (at startup), so the first request does not pay the NOSCRIPT detour."""
        await self.script.load(self.redis)

    def _invocation(self, call: LimitCall) -> tuple[list[str], list[int]]:
        call.policy.check_cost(call.cost)
        if call.now_us is None:
            now, period = USE_REDIS_TIME, usage_period(time.time())
        elif call.now_us < 0:
            raise ValueError(f"now_us must be >= 0 (or None for Redis TIME), got {call.now_us}")
        else:
            now, period = call.now_us, usage_period(call.now_us / 1e6)
        keys = [limiter_key(self.prefix, call.tenant_id, self.algorithm, call.route_class),
                usage_key(self.prefix, call.tenant_id, period)]
        return keys, [now, call.policy.requests, call.policy.window_us, call.cost, *self._tail]

    async def decide(self, tenant_id: str, policy: Policy, now_us: int | None = None, cost: int = 1,
                     route_class: str | None = None) -> LimitResult:
        keys, args = self._invocation(LimitCall(tenant_id, policy, now_us, cost, route_class))
        return _result(await self.script(self.redis, keys, args))

    async def decide_many(self, calls: Sequence[LimitCall]) -> list[LimitResult]:
        """Many decisions in one pipelined round trip, applied in order (replays, benchmarks)."""
        invocations = [self._invocation(c) for c in calls]
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for i in todo:
                keys, args = invocations[i]
                pipe.evalsha(self.script.sha, len(keys), *keys, *args)
            out = await pipe.execute(raise_on_error=False)
            failed = []
            for i, reply in zip(todo, out, strict=True):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    failed.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    replies[i] = reply
            if not failed:
                break
            # NOSCRIPT means the call did nothing; a flush mid-batch reorders only the calls it hit.
            await self.load()
            todo = failed
        return [_result(r) for r in replies]

    async def state(self, tenant_id: str, route_class: str | None = None) -> Any:
        """The limiter state as stored, in the core's form (None when absent)."""
        return await read_state(self.redis, limiter_key(self.prefix, tenant_id, self.algorithm, route_class),
                                self.algorithm)


def _result(reply: Sequence[int]) -> LimitResult:
    allowed, remaining, reset_us, retry_after_us, usage, decided_us = (int(v) for v in reply)
    return LimitResult(allowed == 1, remaining, reset_us, retry_after_us, usage, decided_us)


async def read_state(redis: Redis, key: str, algorithm: str) -> Any:
    """Read a limiter key into its core state; the inverse of what the scripts write."""
    if algorithm in PACKED_STATES:
        layout, state = PACKED_STATES[algorithm]
        packed = await redis.get(key)
        return None if packed is None else state(*layout.unpack(packed))
    if algorithm == "gcra":
        tat = await redis.get(key)
        return None if tat is None else GcraState(int(tat))
    if algorithm == "sliding_log":
        entries = await redis.lrange(key, 0, -1)
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

    def __init__(self, redis: Redis, prefix: str, *, race_delay_s: float = 0.0,
                 ttl_slack_ms: int = TTL_SLACK_MS, usage_ttl_s: int = USAGE_TTL_S) -> None:
        self.redis = redis
        self.prefix = prefix
        self.race_delay_s = race_delay_s
        self._ttl_slack_ms = ttl_slack_ms
        self._usage_ttl_s = usage_ttl_s

    async def load(self) -> None:
        """Nothing to load: this design runs no script."""

    async def decide(self, tenant_id: str, policy: Policy, now_us: int | None = None, cost: int = 1,
                     route_class: str | None = None) -> LimitResult:
        now = time.time_ns() // 1000 if now_us is None else now_us
        key = limiter_key(self.prefix, tenant_id, self.algorithm, route_class)
        ukey = usage_key(self.prefix, tenant_id, usage_period(now / 1e6))
        layout, _ = PACKED_STATES[self.algorithm]
        read = self.redis.pipeline(transaction=False)
        read.get(key)
        read.incr(ukey)
        packed, used = await read.execute()
        if self.race_delay_s > 0:
            await asyncio.sleep(self.race_delay_s)
        state = None if packed is None else FixedWindowState(*layout.unpack(packed))
        d = fixed_window(state, now, policy, cost)
        write = self.redis.pipeline(transaction=False)
        write.set(key, layout.pack(d.state.window_start_us, d.state.count),
                  px=-(-d.reset_us // 1000) + self._ttl_slack_ms)
        if used == 1:
            write.expire(ukey, self._usage_ttl_s)
        await write.execute()
        return LimitResult(d.allowed, d.remaining, d.reset_us, d.retry_after_us, int(used),
                           max(now, d.state.window_start_us))

    async def state(self, tenant_id: str, route_class: str | None = None) -> Any:
        return await read_state(self.redis, limiter_key(self.prefix, tenant_id, self.algorithm, route_class),
                                self.algorithm)


def make_limiter(redis: Redis, prefix: str, algorithm: str, **options: Any) -> RateLimiter:
    """The store for a design name (`core.ALGORITHMS`); the one factory the service uses."""
    if algorithm == "naive":
        return NaiveRedisRateLimiter(redis, prefix, **options)
    return RedisRateLimiter(redis, prefix, algorithm, **options)


# ---------------------------------------------------------------------------------------------
# Memory per tenant


# Measured with MEMORY USAGE on Redis 7.0 (a quicklist for the log), less the key name; the packed
# STRING states (16 or 24 bytes, with a TTL) measure 76 to 88 bytes, by the key name's length.
_BASE_BYTES = {"fixed_window": 80, "naive": 80, "sliding_counter": 80, "token_bucket": 80, "gcra": 48,
               "sliding_log": 150}
_LOG_ENTRY_BYTES_X4 = 41  # 10.25 bytes per list entry


def state_bytes(algorithm: str, state: Any, key_len: int = 40) -> int:
    """Estimated Redis memory of one limiter key holding `state` (0 when the key is absent)."""
    if state is None:
        return 0
    if algorithm == "sliding_log":
        return _BASE_BYTES[algorithm] + key_len + _LOG_ENTRY_BYTES_X4 * len(state.entries) // 4
    return _BASE_BYTES[algorithm] + key_len


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
    """At most `limit` requests in flight per tenant: a ZSET of leases, acquired atomically in Lua.

    A lease expires after `lease_us`, so a worker that crashes mid-request gives its slot back;
    set it above the longest request the service allows.
    """

    def __init__(self, redis: Redis, prefix: str, *, lease_us: int, ttl_slack_ms: int = TTL_SLACK_MS) -> None:
        if lease_us < 1:
            raise ValueError("lease_us must be >= 1")
        self.redis = redis
        self.prefix = prefix
        self.lease_us = lease_us
        self._ttl_slack_ms = ttl_slack_ms
        self.script = Script(script_source("concurrency"))

    async def load(self) -> None:
        await self.script.load(self.redis)

    async def acquire(self, tenant_id: str, limit: int, *, lease_id: str | None = None,
                      now_us: int | None = None, route_class: str | None = None) -> ConcurrencyResult:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        lease = lease_id or uuid.uuid4().hex
        reply = await self.script(self.redis, [concurrency_key(self.prefix, tenant_id, route_class)],
                                  [USE_REDIS_TIME if now_us is None else now_us, lease, limit, self.lease_us,
                                   self._ttl_slack_ms])
        allowed, in_flight, retry = (int(v) for v in reply)
        return ConcurrencyResult(allowed == 1, in_flight, retry, lease)

    async def release(self, tenant_id: str, lease_id: str, *, route_class: str | None = None) -> bool:
        """Give the slot back; False if the lease had already expired (or was never held)."""
        return bool(await self.redis.zrem(concurrency_key(self.prefix, tenant_id, route_class), lease_id))

    async def leases(self, tenant_id: str, route_class: str | None = None) -> Leases:
        entries = await self.redis.zrange(concurrency_key(self.prefix, tenant_id, route_class), 0, -1,
                                          withscores=True)
        return Leases(tuple((int(score), m.decode() if isinstance(m, bytes) else m) for m, score in entries))
