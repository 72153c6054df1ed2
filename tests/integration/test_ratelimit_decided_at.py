"""The decision time the Lua scripts return (what lab mode shows as `Saaslab-Decided-At`) is the one
`invariants.decision_time` derives from the Python core, event by event, clock steps back included;
and the service shows it in lab mode only."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from live_app import live_service
from redis.asyncio import Redis

from reference_impl.ratelimit.core import STRICT_ALGORITHMS, Policy, decide
from reference_impl.ratelimit.invariants import DECIDED_AT_HEADER, decision_time
from reference_impl.ratelimit.redis_store import LimitCall, NaiveRedisRateLimiter, RedisRateLimiter
from saaslab.settings import Settings

pytestmark = pytest.mark.integration

EPOCH = 1_700_000_000_000_000
S = 1_000_000
POLICY = Policy(4, S)


@pytest_asyncio.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    assert settings.redis_url
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


def _trace(seed: int, n: int) -> list[int]:
    """Clock readings: bursts, steps across window boundaries, and steps back (some into older windows)."""
    rng = random.Random(seed)
    now = EPOCH + rng.randrange(S)
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.3:
            pass
        elif kind < 0.75:
            now += rng.randrange(1, 200_000)
        elif kind < 0.85:
            now = now - now % S + S + rng.randrange(-3, 4)
        else:
            now -= rng.randrange(1, 600_000)
        out.append(now)
    return out


@pytest.mark.parametrize("algorithm", STRICT_ALGORITHMS)
async def test_the_scripts_decision_time_is_the_cores(algorithm: str, redis: Redis, settings: Settings) -> None:
    clocks = _trace(seed=STRICT_ALGORITHMS.index(algorithm), n=3_000)
    assert settings.redis_url
    store = RedisRateLimiter(settings.redis_url, f"{settings.redis_prefix}:da{uuid.uuid4().hex[:8]}", algorithm,
                             ttl_slack_ms=600_000)
    await store.load()
    got = await store.decide_many([LimitCall("t", POLICY, now) for now in clocks])
    state = None
    stepped_back = 0
    for i, (now, result) in enumerate(zip(clocks, got, strict=True)):
        d = decide(algorithm, state, now, POLICY)
        state = d.state
        expected = decision_time(algorithm, state, now)
        stepped_back += expected != now
        assert (result.allowed, result.decided_us) == (d.allowed, expected), (i, now, result)
    # Steps back into time the state already holds happened, except where no such time is kept.
    assert stepped_back > 0 or algorithm == "gcra"


async def test_the_naive_store_reports_its_own_clock(redis: Redis, settings: Settings) -> None:
    assert settings.redis_url
    store = NaiveRedisRateLimiter(settings.redis_url, f"{settings.redis_prefix}:da{uuid.uuid4().hex[:8]}")
    before = time.time_ns() // 1000
    first = await store.decide("t", POLICY)
    assert before <= first.decided_us <= time.time_ns() // 1000
    # A clock behind the stored window counts in that window.
    assert (await store.decide("t", POLICY, now_us=EPOCH)).decided_us == first.decided_us - first.decided_us % S


@pytest.mark.parametrize("lab_mode", [True, False])
async def test_the_service_shows_the_decision_time_in_lab_mode_only(settings: Settings, lab_mode: bool) -> None:
    async with live_service(settings, lab_mode=lab_mode, ratelimit="fixed_window") as svc:
        r = await svc.client.post("/admin/tenants", headers=svc.admin,
                                  json={"name": f"da-{uuid.uuid4().hex[:6]}", "plan": "pro",
                                        "limits": {"requests": 1, "window_s": 60}})
        headers = {"Authorization": f"Bearer {r.json()['api_key']}"}
        before = time.time_ns() // 1000
        answers = [await svc.client.get("/v1/usage", headers=headers) for _ in range(2)]
        after = time.time_ns() // 1000
        assert [a.status_code for a in answers] == [200, 429]
        if not lab_mode:
            assert all(DECIDED_AT_HEADER not in a.headers for a in answers)
            return
        decided = [int(a.headers[DECIDED_AT_HEADER]) for a in answers]
        # Redis TIME on this machine's clock, in the order Redis ran the scripts.
        assert before - 1_000 <= decided[0] <= decided[1] <= after + 1_000
