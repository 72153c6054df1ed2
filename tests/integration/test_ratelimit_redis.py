"""Rate limiting on real Redis: the Lua scripts decide exactly as the Python cores, event by event,
and under concurrency the strict designs admit exactly the limit while the naive one does not.

Every test drives the adapters the service runs (`redis_store.make_limiter`, `RedisConcurrencyLimiter`),
each on its own `ScriptRunner` connection."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from reference_impl.common.redis_client import ScriptRunner
from reference_impl.common.usage import usage_key, usage_period
from reference_impl.ratelimit.core import (
    ALGORITHMS,
    STRICT_ALGORITHMS,
    FixedWindowState,
    Leases,
    Policy,
    acquire,
    decide,
    release,
    state_bytes,
)
from reference_impl.ratelimit.invariants import F_DECIDE, decision_time, decision_value, no_over_admission
from reference_impl.ratelimit.redis_store import (
    TTL_SLACK_MS,
    USAGE_TTL_S,
    LeaseRequest,
    LimitCall,
    LimitResult,
    NaiveRedisRateLimiter,
    RedisConcurrencyLimiter,
    RedisRateLimiter,
    limiter_key,
    make_limiter,
)
from saaslab.history import History
from saaslab.settings import Settings

pytestmark = pytest.mark.integration

EPOCH = 1_700_000_000_000_000
S = 1_000_000
# Replays run far faster than the traces' clocks: keep keys alive in real time for the whole replay.
REPLAY_SLACK_MS = 600_000
POLICIES = {"t0": Policy(5, S), "t1": Policy(50, 10 * S), "t2": Policy(3, 100_000), "t3": Policy(1000, 60 * S)}
CHANGED_POLICY = Policy(4, 2 * S)
"""t1 switches to it halfway through a trace: a policy changed at runtime."""


@pytest_asyncio.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    assert settings.redis_url
    client = Redis.from_url(settings.redis_url, max_connections=300)
    yield client
    await client.aclose()


@pytest.fixture
def url(settings: Settings) -> str:
    assert settings.redis_url
    return settings.redis_url


@pytest_asyncio.fixture
async def prefix(settings: Settings, redis: Redis) -> AsyncIterator[str]:
    p = f"{settings.redis_prefix}:rl{uuid.uuid4().hex[:8]}"
    yield p
    keys = [k async for k in redis.scan_iter(match=f"{p}:*", count=1000)]
    if keys:
        await redis.delete(*keys)


def _trace(seed: int, n: int) -> list[LimitCall]:
    """Bursts, events straddling window boundaries, clock jumps forward and small steps back."""
    rng = random.Random(seed)
    now = EPOCH + rng.randrange(S)
    calls = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.45:
            pass  # a burst: the same instant
        elif kind < 0.85:
            now += rng.randrange(1, 5_000)
        elif kind < 0.93:  # just around a boundary of one of the windows
            w = rng.choice([S, 10 * S, 100_000, 2 * S])
            now = now - now % w + w + rng.randrange(-3, 4)
        elif kind < 0.935:
            now += rng.randrange(S, 120 * S)
        elif kind < 0.98:
            now -= rng.randrange(1, 50_000)
        else:
            now += rng.randrange(100_000, S)
        tenant = rng.choice(list(POLICIES))
        policy = CHANGED_POLICY if tenant == "t1" and i > n // 2 else POLICIES[tenant]
        cost = 1 if rng.random() < 0.85 else rng.randint(1, min(3, policy.requests))
        calls.append(LimitCall(tenant, policy, now, cost, "write" if rng.random() < 0.2 else None))
    return calls


def _python(algorithm: str, calls: list[LimitCall]) -> tuple[list[tuple[bool, int, int, int, int]], dict[Any, Any]]:
    """The cores' decisions (with usage counted per tenant and period) and the final states."""
    states: dict[tuple[str, str | None], Any] = {}
    usage: Counter[tuple[str, str]] = Counter()
    out = []
    for c in calls:
        d = decide(algorithm, states.get((c.tenant_id, c.route_class)), c.now_us or 0, c.policy, c.cost)
        states[(c.tenant_id, c.route_class)] = d.state
        usage[(c.tenant_id, usage_period((c.now_us or 0) / 1e6))] += 1
        out.append((d.allowed, d.remaining, d.reset_us, d.retry_after_us,
                    usage[(c.tenant_id, usage_period((c.now_us or 0) / 1e6))]))
    return out, states


def _tuple(r: LimitResult) -> tuple[bool, int, int, int, int]:
    return (r.allowed, r.remaining, r.reset_us, r.retry_after_us, r.usage)


# --- parity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", STRICT_ALGORITHMS)
async def test_lua_decides_exactly_as_the_python_core(algorithm: str, redis: Redis, url: str, prefix: str) -> None:
    calls = _trace(seed=STRICT_ALGORITHMS.index(algorithm), n=10_000)
    expected, states = _python(algorithm, calls)
    store = RedisRateLimiter(url, prefix, algorithm, ttl_slack_ms=REPLAY_SLACK_MS)
    await store.load()
    got: list[LimitResult] = []
    for i in range(0, len(calls), 1_000):
        got += await store.decide_many(calls[i:i + 1_000])
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert e == _tuple(g), (i, calls[i], e, g)
    assert 0.1 < sum(e[0] for e in expected) / len(expected) < 0.9  # both outcomes well exercised
    for (tenant, route_class), state in states.items():
        assert await store.state(tenant, route_class) == state


async def test_the_naive_store_decides_as_the_fixed_window_when_alone(redis: Redis, url: str, prefix: str) -> None:
    calls = _trace(seed=11, n=1_000)
    expected, states = _python("fixed_window", calls)
    store = NaiveRedisRateLimiter(url, prefix, ttl_slack_ms=REPLAY_SLACK_MS)
    for i, c in enumerate(calls):
        got = await store.decide(c.tenant_id, c.policy, c.now_us, c.cost, c.route_class)
        assert _tuple(got) == expected[i], (i, c)
    for (tenant, route_class), state in states.items():
        assert await store.state(tenant, route_class) == state


@pytest.mark.parametrize("algorithm", STRICT_ALGORITHMS)
async def test_redis_time_is_the_clock_when_none_is_given(algorithm: str, redis: Redis, url: str, prefix: str) -> None:
    store = RedisRateLimiter(url, prefix, algorithm)
    policy = Policy(3, 60 * S)
    results = [await store.decide("t", policy) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining for r in results[:3]] == [2, 1, 0]
    assert [r.usage for r in results] == [1, 2, 3, 4]
    # The sliding counter may wait into the next window, for the previous one's weight to decay.
    assert 0 < results[3].retry_after_us <= 120 * S and 0 < results[3].reset_us <= 120 * S
    # The stored times come from Redis's clock (the same machine's as ours here).
    assert abs(_newest_time(await store.state("t")) - time.time_ns() // 1000) < 61 * S


def _newest_time(state: Any) -> int:
    for name in ("tat_us", "updated_us", "window_start_us"):
        if hasattr(state, name):
            return int(getattr(state, name))
    return int(state.entries[-1])


async def test_keys_are_hash_tagged_and_expire_with_their_state(redis: Redis, url: str, prefix: str) -> None:
    store = RedisRateLimiter(url, prefix, "fixed_window")
    policy = Policy(2, 10 * S)
    now = EPOCH + 3 * S
    for _ in range(3):
        await store.decide("acme", policy, now_us=now, route_class="write")
    key = limiter_key(prefix, "acme", "fixed_window", "write")
    assert key == f"{prefix}:{{acme}}:rl:v2:fixed_window:write"
    assert 7_000 < await redis.pttl(key) <= 7_000 + 1_000  # the rest of the window plus slack
    ukey = usage_key(prefix, "acme", usage_period(now / 1e6))
    assert int(await redis.get(ukey)) == 3  # refused requests count as usage too
    assert USAGE_TTL_S - 5 <= await redis.ttl(ukey) <= USAGE_TTL_S


@pytest.mark.parametrize("algorithm", STRICT_ALGORITHMS)
async def test_the_expiry_travels_with_the_state(algorithm: str, redis: Redis, url: str, prefix: str) -> None:
    """Each write of the state sets the key's TTL to its reset plus slack; a refusal that writes
    nothing leaves the TTL the last write set, which runs to the same time."""
    store = RedisRateLimiter(url, prefix, algorithm)
    policy = Policy(2, 10 * S)
    results = [await store.decide("acme", policy, now_us=EPOCH + 3 * S) for _ in range(3)]
    assert [r.allowed for r in results] == [True, True, False]
    ttl_ms = -(-results[-1].reset_us // 1000) + TTL_SLACK_MS
    assert ttl_ms - 500 < await redis.pttl(limiter_key(prefix, "acme", algorithm)) <= ttl_ms


async def test_a_flushed_script_is_loaded_again(redis: Redis, url: str, prefix: str) -> None:
    store = RedisRateLimiter(url, prefix, "gcra")
    # A source no Redis has seen stands in for a flushed script cache (without flushing a shared server).
    store.runner = ScriptRunner(url, store.runner.script + f"\n-- {uuid.uuid4().hex}")
    assert (await redis.script_exists(store.runner.sha)) == [False]
    assert (await store.decide("t", Policy(2, S), now_us=EPOCH)).allowed
    assert (await redis.script_exists(store.runner.sha)) == [True]
    store.runner = ScriptRunner(url, store.runner.script + f"\n-- {uuid.uuid4().hex}")
    results = await store.decide_many([LimitCall("u", Policy(2, S), EPOCH)] * 3)
    assert [r.allowed for r in results] == [True, True, False]


async def test_memory_estimate_matches_memory_usage(redis: Redis, url: str, prefix: str) -> None:
    policy = Policy(200, 60 * S)
    for algorithm in ALGORITHMS:
        store = make_limiter(url, prefix, algorithm)
        for i in range(150):
            await store.decide("tenant-0001", policy, now_us=EPOCH + i * 1_000)
        key = limiter_key(prefix, "tenant-0001", algorithm)
        measured = await redis.memory_usage(key, samples=0)
        estimated = state_bytes(algorithm, await store.state("tenant-0001"), len(key))
        assert 0.65 * measured <= estimated <= 1.35 * measured, (algorithm, measured, estimated)


# --- concurrency ------------------------------------------------------------------------------


LIMIT = Policy(50, 60 * S)
NOW = EPOCH + 17 * S  # mid-window: all 200 decisions fall in one window


async def _burst(limiter: Any, tenant: str, n: int) -> list[bool]:
    results = await asyncio.gather(*(limiter.decide(tenant, LIMIT, now_us=NOW) for _ in range(n)))
    return [r.allowed for r in results]


def _history(algorithm: str, tenant: str, allowed: list[bool]) -> History:
    h = History(process="test")
    for a in allowed:
        op = h.invoke(F_DECIDE, decision_value(tenant=tenant, time_us=NOW, allowed=a, policy=LIMIT,
                                               algorithm=algorithm), time_us=NOW)
        h.complete(op, "ok", time_us=NOW)
    return h


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_200_concurrent_requests_admit_exactly_the_limit(algorithm: str, redis: Redis, url: str, prefix: str) -> None:
    limiter = make_limiter(url, prefix, algorithm)
    await limiter.runner.command("PING")  # connected before the burst
    allowed = await _burst(limiter, "burst", 200)
    check = no_over_admission(_history(algorithm, "burst", allowed).ops)
    if algorithm == "naive":
        # 200 reads go out before the first write lands, so most read a count below the limit.
        assert sum(allowed) > 50 and not check.valid
    else:
        assert sum(allowed) == 50 and check.valid


async def test_the_naive_race_delay_widens_the_window_between_read_and_write(redis: Redis, url: str, prefix: str) -> None:
    """The lab knob for slower networks: every read lands before the first write, whatever the timing."""
    limiter = NaiveRedisRateLimiter(url, prefix, race_delay_s=0.02)
    results = await asyncio.gather(*(limiter.decide("slow", Policy(1, 60 * S), now_us=NOW) for _ in range(10)))
    assert all(r.allowed for r in results)
    assert await limiter.state("slow") == FixedWindowState(NOW - NOW % (60 * S), 1)


CHILD = """
import asyncio, json, sys, time
from reference_impl.ratelimit.core import Policy
from reference_impl.ratelimit.redis_store import make_limiter

url, prefix, start_at, now = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
algorithms = sys.argv[5].split(",")

async def main():
    admitted = {}
    for i, algorithm in enumerate(algorithms):
        limiter = make_limiter(url, prefix, algorithm)
        await limiter.runner.command("PING")  # connected before the burst
        await asyncio.sleep(max(0.0, start_at + 0.2 * i - time.time()))
        results = await asyncio.gather(*(limiter.decide("procs", Policy(50, 60_000_000), now_us=now)
                                         for _ in range(100)))
        admitted[algorithm] = sum(r.allowed for r in results)
        await limiter.close()
    print(json.dumps(admitted))

asyncio.run(main())
"""


def test_two_processes_sharing_redis_admit_exactly_the_limit(settings: Settings, prefix: str) -> None:
    """100 concurrent requests from each of 2 OS processes, started together, per algorithm."""
    assert settings.redis_url
    start_at = time.time() + 1.5  # both processes have imported and connected by then
    args = [settings.redis_url, prefix, str(start_at), str(NOW), ",".join(ALGORITHMS)]
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    for algorithm in ALGORITHMS:
        total = outs[0][algorithm] + outs[1][algorithm]
        if algorithm == "naive":
            assert total > 50
        else:
            assert total == 50, algorithm


async def test_concurrency_limiter_holds_exactly_n_in_flight(redis: Redis, url: str, prefix: str) -> None:
    limiter = RedisConcurrencyLimiter(url, prefix, lease_us=30 * S)
    await limiter.runner.command("PING")
    results = await asyncio.gather(*(limiter.acquire("t", 50) for _ in range(200)))
    held = [r for r in results if r.allowed]
    assert len(held) == 50 and max(r.in_flight for r in results) == 50
    assert all(0 < r.retry_after_us <= 30 * S for r in results if not r.allowed)
    assert all(await asyncio.gather(*(limiter.release("t", r.lease_id) for r in held[:10])))
    assert not await limiter.release("t", held[0].lease_id)  # already released
    again = await asyncio.gather(*(limiter.acquire("t", 50) for _ in range(20)))
    assert sum(r.allowed for r in again) == 10
    assert len((await limiter.leases("t")).entries) == 50


async def test_concurrency_limiter_matches_the_core_and_reclaims_expired_leases(redis: Redis, url: str, prefix: str) -> None:
    limiter = RedisConcurrencyLimiter(url, prefix, lease_us=5_000, ttl_slack_ms=REPLAY_SLACK_MS)
    rng = random.Random(5)
    state: Leases | None = None
    now = EPOCH
    held: list[str] = []
    for i in range(2_000):
        now += rng.choice([0, 10, 100, 1_000, 3_000])
        if held and rng.random() < 0.3:
            lease = held.pop(rng.randrange(len(held)))
            state = release(state, lease)
            await limiter.release("t", lease)
            continue
        lease = rng.choice(held) if held and rng.random() < 0.1 else f"l{i}"
        expected = acquire(state, now, lease, 4, 5_000)
        got = await limiter.acquire("t", 4, lease_id=lease, now_us=now)
        assert (got.allowed, got.in_flight, got.retry_after_us) == (
            expected.allowed, expected.in_flight, expected.retry_after_us), i
        state = expected.state
        if got.allowed and lease not in held:
            held.append(lease)
    assert await limiter.leases("t") == (state or Leases())


@pytest.mark.parametrize("algorithm", STRICT_ALGORITHMS)
async def test_a_limiter_call_with_a_lease_decides_as_the_core_then_core_acquire(algorithm: str, url: str,
                                                                                  prefix: str) -> None:
    """One round trip for both limiters: the script decides as its core, and when it admits, takes the
    lease exactly as `core.acquire` would at the decision's time; releases go through the service's ZREM."""
    store = RedisRateLimiter(url, prefix, algorithm, ttl_slack_ms=REPLAY_SLACK_MS)
    leases = RedisConcurrencyLimiter(url, prefix, lease_us=5_000, ttl_slack_ms=REPLAY_SLACK_MS)
    rng = random.Random(STRICT_ALGORITHMS.index(algorithm))
    policy, limit = Policy(100, 100_000), 3
    state: Any = None
    held_state: Leases | None = None
    held: list[str] = []
    now = EPOCH
    outcomes: Counter[str] = Counter()
    for i in range(1_500):
        now += rng.choice([0, 10, 100, 1_000, 3_000]) if rng.random() > 0.05 else -rng.randrange(1, 20_000)
        if held and rng.random() < 0.3:
            lease = held.pop(rng.randrange(len(held)))
            held_state = release(held_state, lease)
            await leases.release("t", lease)
            continue
        d = decide(algorithm, state, now, policy)
        state = d.state
        got, got_lease = await store.decide_and_lease("t", policy, LeaseRequest(f"l{i}", limit, 5_000), now)
        assert (got.allowed, got.remaining, got.reset_us, got.retry_after_us, got.decided_us) == (
            d.allowed, d.remaining, d.reset_us, d.retry_after_us, decision_time(algorithm, d.state, now)), i
        if not d.allowed:
            assert got_lease is None
            outcomes["rate-limited"] += 1
            continue
        expected = acquire(held_state, got.decided_us, f"l{i}", limit, 5_000)
        held_state = expected.state
        assert got_lease is not None
        assert (got_lease.allowed, got_lease.in_flight, got_lease.retry_after_us) == (
            expected.allowed, expected.in_flight, expected.retry_after_us), i
        outcomes["leased" if expected.allowed else "concurrency-limited"] += 1
        if expected.allowed:
            held.append(f"l{i}")
    assert await leases.leases("t") == (held_state or Leases())
    assert min(outcomes.values()) > 50 and len(outcomes) == 3, outcomes
