"""Idempotency on real PostgreSQL and Redis: exact counts under concurrency, Lua and SQL against the
core on the same traces, crashes between phases finished by the completer, the reaper, the provider,
and the checker passing safe histories and catching the unsafe design."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from reference_impl.common.db import Pool, migrate
from reference_impl.idempotency import completer, postgres, provider, reaper
from reference_impl.idempotency.core import (
    Claim,
    Held,
    Outcome,
    Policy,
    State,
    StoredResponse,
    abandoned,
    claim_step,
    fingerprint,
    finish_step,
    release_step,
)
from reference_impl.idempotency.designs import DESIGNS, IdempotencyDesign, make_design
from reference_impl.idempotency.invariants import F_PAY, attempt_value, check, response_value
from reference_impl.idempotency.ledger import CHECKPOINTS, RECORDED, PaymentRequest, read_state
from reference_impl.idempotency.postgres import PostgresIdempotency
from reference_impl.idempotency.provider import ProviderError, ProviderFault, ProviderTimeout
from reference_impl.idempotency.redis_store import RedisIdempotency, record_key
from saaslab.history import History
from saaslab.settings import Settings

pytestmark = pytest.mark.integration

EPOCH = 1_700_000_000_000_000
S = 1_000_000
POLICY = Policy(retention_us=600 * S, lock_timeout_us=10 * S, conflict_retry_after_s=1)
PAYMENT = PaymentRequest(1999, "EUR")
BODY = json.dumps(PAYMENT.params()).encode()
FP = fingerprint("POST", "/v1/payments", BODY)
CONCURRENCY = 50


class Crash(Exception):
    """Stands for a worker dying at a checkpoint."""


def crash_at(point: str) -> Callable[[str], Awaitable[None]]:
    async def checkpoint(reached: str) -> None:
        if reached == point:
            raise Crash(point)
    return checkpoint


@pytest_asyncio.fixture(scope="module")
async def pool(settings: Settings) -> AsyncIterator[Pool]:
    assert settings.database_url
    # More connections than the default: 50 concurrent requests must really contend in PostgreSQL.
    p = Pool(settings.database_url, min_size=2, max_size=20)
    await p.open()
    await migrate(p, [provider.SCHEMA, postgres.SCHEMA])
    yield p
    await p.close()


@pytest_asyncio.fixture(scope="module")
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    assert settings.redis_url
    client = Redis.from_url(settings.redis_url, max_connections=CONCURRENCY + 10)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def prefix(settings: Settings, redis: Redis) -> AsyncIterator[str]:
    p = f"{settings.redis_prefix}:idem{uuid.uuid4().hex[:8]}"
    yield p
    keys = [k async for k in redis.scan_iter(match=f"{p}:*", count=1000)]
    if keys:
        await redis.delete(*keys)


@pytest_asyncio.fixture
async def tenant(pool: Pool) -> AsyncIterator[str]:
    """A tenant of the test's own; its keys are deleted afterwards, so the completer and reaper,
    which scan every tenant, see only the running test's keys."""
    tenant_id = str(uuid.uuid4())
    yield tenant_id
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM idempotency_keys WHERE tenant_id = $1", tenant_id)


async def design(name: str, pool: Pool, redis: Redis, prefix: str) -> IdempotencyDesign:
    d = make_design(name, pool=pool, redis=redis, prefix=prefix, policy=POLICY)
    await d.load()
    return d


async def attempt(store: IdempotencyDesign, history: History, tenant: str, key: str, now_us: int,
                  fault: ProviderFault | None = None) -> Claim:
    """One client attempt of `POST /v1/payments`, recorded as the load harness records it."""
    invoked = history.invoke(F_PAY, attempt_value(tenant, key))
    claim = await store.claim(tenant, key, FP, now_us, payment=PAYMENT)
    if claim.outcome == Outcome.REPLAY:
        assert claim.response is not None
        history.complete(invoked, "ok", response_value(claim.response.status, claim.response.body, True))
    elif not claim.runs:
        history.complete(invoked, "fail", {"status": 409 if claim.outcome == Outcome.CONFLICT else 422})
    else:
        try:
            response = await store.pay(claim, PAYMENT, now_us, fault=fault)
        except ProviderTimeout:
            history.complete(invoked, "info", {"status": 504})
        else:
            history.complete(invoked, "ok", response_value(response.status, response.body, False))
    return claim


async def effects(pool: Pool, tenant: str) -> tuple[int, int]:
    """(successful charges, payment rows) of one tenant."""
    state = await read_state(pool, tenant)
    return sum(c.status == provider.SUCCEEDED for c in state.charges), len(state.payments)


# --- concurrency -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["redis", "postgres"])
async def test_fifty_concurrent_claims_of_one_key_execute_exactly_once(name: str, pool: Pool, redis: Redis,
                                                                       prefix: str, tenant: str) -> None:
    store = await design(name, pool, redis, prefix)
    claims = await asyncio.gather(*(store.claim(tenant, "double-click", FP, EPOCH) for _ in range(CONCURRENCY)))
    assert Counter(c.outcome for c in claims) == {Outcome.EXECUTE: 1, Outcome.CONFLICT: CONCURRENCY - 1}
    assert all(c.retry_after_s == 1 for c in claims if c.outcome == Outcome.CONFLICT)


async def test_postgres_claim_reads_a_row_committed_after_its_statement_began(pool: Pool, tenant: str) -> None:
    """The one-statement claim meets a first request's row that commits while it waits on the unique
    key: its snapshot predates that commit, so it must read the row again rather than miss it."""
    store = PostgresIdempotency(pool, POLICY)
    async with pool.connection() as winner:
        async with winner.transaction():
            await winner.execute(postgres._INSERT, tenant, "racing", "winner-token", FP, EPOCH + POLICY.lock_timeout_us,
                                 EPOCH + POLICY.retention_us, None)
            loser = asyncio.create_task(store.claim(tenant, "racing", FP, EPOCH))
            await asyncio.sleep(0.3)  # the loser's insert now waits for this transaction
            assert not loser.done()
    claim = await asyncio.wait_for(loser, 10)
    assert (claim.outcome, claim.retry_after_s) == (Outcome.CONFLICT, 1)


@pytest.mark.parametrize(("name", "expected"), [("redis", 1), ("postgres", 1), ("none", CONCURRENCY)])
async def test_fifty_concurrent_payments_with_one_key(name: str, expected: int, pool: Pool, redis: Redis,
                                                      prefix: str, tenant: str) -> None:
    store = await design(name, pool, redis, prefix)
    history = History()
    claims = await asyncio.gather(*(attempt(store, history, tenant, "pay-once", EPOCH) for _ in range(CONCURRENCY)))
    assert sum(c.outcome == Outcome.EXECUTE for c in claims) == expected
    assert await effects(pool, tenant) == (expected, expected)

    # The client retries after the first answer: a replay of it, byte for byte (the none design pays again).
    retry = await attempt(store, history, tenant, "pay-once", EPOCH + S)
    first = next(op for op in history.ops if op.type == "ok")
    last = history.ops[-1]
    if name == "none":
        assert retry.outcome == Outcome.EXECUTE and await effects(pool, tenant) == (expected + 1, expected + 1)
    else:
        assert retry.outcome == Outcome.REPLAY
        assert (last.value["status"], last.value["body"]) == (201, first.value["body"])

    results = {r.name: r for r in check(history.ops, await read_state(pool, tenant))}
    if name == "none":
        assert not results["exactly_one_effect"].valid and results["exactly_one_effect"].violations == 1
    else:
        assert all(r.valid for r in results.values()), results
        assert results["replays_match_first"].checked == 1
    assert results["no_orphan_charges"].valid


async def test_a_payment_without_a_key_is_charged_unprotected(pool: Pool, redis: Redis, prefix: str,
                                                              tenant: str) -> None:
    store = await design("none", pool, redis, prefix)
    claim = await store.claim(tenant, "", FP, EPOCH)
    assert (await store.pay(claim, PAYMENT, EPOCH)).status == 201
    state = await read_state(pool, tenant)
    assert [c.reference for c in state.charges] == [None] and [p.idempotency_key for p in state.payments] == [None]


# --- parity: the stores decide as the core does ------------------------------------------------------------

def _trace(seed: int, n: int) -> list[tuple[int, str, int, int]]:
    """(now_us, action, key index, fingerprint index): bursts, gaps around the lock and retention."""
    rng = random.Random(seed)
    # First the corner a random walk rarely hits: a claim recovered in the last moments of its
    # retention lives on until its new lock ends.
    late = EPOCH + POLICY.retention_us - 1
    out = [(EPOCH, "claim", 0, 0), (late, "claim", 0, 0), (late + 2, "claim", 0, 0),
           (late + POLICY.lock_timeout_us, "claim", 0, 0)]
    now = out[-1][0]
    for _ in range(n):
        now += rng.choice([0, 0, 1, rng.randrange(S), POLICY.lock_timeout_us - 1, POLICY.lock_timeout_us,
                           rng.randrange(3 * POLICY.lock_timeout_us), POLICY.retention_us])
        out.append((now, rng.choice(["claim", "claim", "claim", "finish", "release"]), rng.randrange(3),
                    rng.randrange(2)))
    return out


@pytest.mark.parametrize("name", ["redis", "postgres"])
async def test_the_store_decides_and_stores_exactly_as_the_core(name: str, pool: Pool, redis: Redis, prefix: str,
                                                               tenant: str) -> None:
    """The trace through the store and through core.py's steps: the same decisions, answers and records. Finish
    and release come from the key's latest claim or (fingerprint index 1) its first, which a newer claim may
    have replaced: the token guard of the SQL and Lua must match the core's."""
    store = PostgresIdempotency(pool, POLICY) if name == "postgres" else RedisIdempotency(redis, pool, prefix, POLICY)
    await store.load()
    fps = [fingerprint("POST", "/v1/projects", b'{"name":"%d"}' % i) for i in range(2)]
    model: dict[str, Held | None] = {}
    holders: dict[str, list[Claim]] = {}
    seen: Counter[str] = Counter()
    stale: Counter[str] = Counter()
    for step, (now, action, k, f) in enumerate(_trace(seed=7, n=400)):
        key = f"key-{k}"
        held = model.get(key)
        if action == "claim":
            claim = await store.claim(tenant, key, fps[f], now)
            # The store draws its own token for a new claim: the core's step is given the same one.
            expected = claim_step(held, tenant, key, fps[f], now, POLICY, claim.token or "unused")
            seen[expected.claim.outcome] += 1
            assert claim == expected.claim, step
            if claim.runs:
                holders.setdefault(key, []).append(claim)
            model[key] = expected.held
        elif key in holders:
            holder = holders[key][0 if f else -1]
            stale[action] += held is None or holder.token != held.token
            if action == "finish":
                response = StoredResponse(201, (("content-type", "application/json"),), b'{"step":%d}' % step)
                expected_finish = finish_step(held, holder.token, response)
                assert await store.finish(holder, response) == expected_finish.response, step
                model[key] = expected_finish.written or held
            else:
                await store.release(holder, now)
                model[key] = release_step(held, holder.token, now) or held
        if key in model:
            held = model[key]
            assert await store.record(tenant, key) == (None if held is None else held.record), step
        if name == "postgres":
            async with pool.connection() as conn:
                # The scan spans every tenant: other tests of this session leave claims of their own.
                found = {r["key"] for r in await conn.fetch(completer._ABANDONED, now, completer.BATCH)
                         if r["tenant_id"] == tenant}
            assert found == {k for k, h in model.items() if h is not None and abandoned(h.record, now)}, step
    assert set(seen) == set(Outcome), seen  # the trace reached every decision
    assert stale["finish"] and stale["release"], stale  # and writes by claims no longer held


@pytest.mark.parametrize("name", ["redis", "postgres"])
async def test_the_first_stored_response_wins_and_a_lost_claim_stores_nothing(name: str, pool: Pool, redis: Redis,
                                                                             prefix: str, tenant: str) -> None:
    store = PostgresIdempotency(pool, POLICY) if name == "postgres" else RedisIdempotency(redis, pool, prefix, POLICY)
    first, second = StoredResponse(201, (("x-a", "1"), ("x-a", "2")), b"first"), StoredResponse(500, (), b"second")
    claim = await store.claim(tenant, "k", FP, EPOCH)
    assert await store.finish(claim, first) == first
    assert await store.finish(claim, second) == first
    record = await store.record(tenant, "k")
    assert record is not None and record.response == first
    lost = await store.claim(tenant, "lost", FP, EPOCH)
    if isinstance(store, RedisIdempotency):
        await redis.delete(record_key(prefix, tenant, "lost"))
    else:
        async with pool.connection() as conn:
            await conn.execute("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = 'lost'", tenant)
    assert await store.finish(lost, second) == second
    assert await store.record(tenant, "lost") is None


async def test_redis_forgets_a_record_when_the_core_would(pool: Pool, redis: Redis, prefix: str, tenant: str) -> None:
    store = RedisIdempotency(redis, pool, prefix, POLICY, ttl_slack_ms=1000)
    key = record_key(prefix, tenant, "ttl")
    await store.claim(tenant, "ttl", FP, EPOCH)
    assert POLICY.retention_us // 1000 < await redis.pttl(key) <= POLICY.retention_us // 1000 + 1000
    # Recovered 1 s before retention ends: kept until its new lock ends instead.
    await store.claim(tenant, "ttl", FP, EPOCH + POLICY.retention_us - S)
    assert POLICY.lock_timeout_us // 1000 < await redis.pttl(key) <= POLICY.lock_timeout_us // 1000 + 1000


# --- crashes between phases ---------------------------------------------------------------------------------

@pytest.mark.parametrize("point", ["claimed", *CHECKPOINTS])
async def test_the_completer_finishes_a_payment_crashed_after_any_phase(point: str, pool: Pool, tenant: str) -> None:
    store = PostgresIdempotency(pool, POLICY)
    claim = await store.claim(tenant, "crash", FP, EPOCH, payment=PAYMENT)
    if point != "claimed":
        with pytest.raises(Crash):
            await store.pay(claim, PAYMENT, EPOCH, checkpoint=crash_at(point))
    charged = 0 if point == "claimed" else 1
    assert await effects(pool, tenant) == (charged, 1 if point == RECORDED else 0)
    assert (await store.claim(tenant, "crash", FP, EPOCH + S)).outcome == Outcome.CONFLICT  # still locked

    assert await completer.run_once(pool, EPOCH + POLICY.lock_timeout_us - 1, policy=POLICY) == 0
    assert await completer.run_once(pool, EPOCH + POLICY.lock_timeout_us, policy=POLICY) == 1
    assert await completer.run_once(pool, EPOCH + 2 * POLICY.lock_timeout_us, policy=POLICY) == 0
    assert await effects(pool, tenant) == (1, 1)
    state = await read_state(pool, tenant)
    assert state.payments[0].charge_id == state.charges[0].id
    record = await store.record(tenant, "crash")
    assert record is not None and record.state == State.FINISHED and record.response is not None
    assert record.response.status == 201
    assert json.loads(record.response.body)["id"] == str(state.payments[0].id)
    replay = await store.claim(tenant, "crash", FP, EPOCH + 3 * POLICY.lock_timeout_us)
    assert (replay.outcome, replay.response) == (Outcome.REPLAY, record.response)
    assert all(r.valid for r in check([], state))


@pytest.mark.parametrize("name", ["redis", "postgres"])
@pytest.mark.parametrize("point", CHECKPOINTS)
async def test_a_retry_after_the_lock_timeout_recovers_a_crashed_payment(name: str, point: str, pool: Pool,
                                                                        redis: Redis, prefix: str, tenant: str) -> None:
    store = await design(name, pool, redis, prefix)
    claim = await store.claim(tenant, "crash", FP, EPOCH, payment=PAYMENT)
    with pytest.raises(Crash):
        await store.pay(claim, PAYMENT, EPOCH, checkpoint=crash_at(point))
    retry = await store.claim(tenant, "crash", FP, EPOCH + POLICY.lock_timeout_us, payment=PAYMENT)
    assert retry.outcome == Outcome.RECOVER and retry.token == claim.token
    response = await store.pay(retry, PAYMENT, EPOCH + POLICY.lock_timeout_us)
    assert response.status == 201
    assert await effects(pool, tenant) == (1, 1)
    again = await store.claim(tenant, "crash", FP, EPOCH + POLICY.lock_timeout_us + 1)
    assert (again.outcome, again.response) == (Outcome.REPLAY, response)


@pytest.mark.parametrize("name", ["redis", "postgres"])
async def test_a_slow_holder_and_the_retry_that_recovered_its_claim_pay_once(name: str, pool: Pool, redis: Redis,
                                                                            prefix: str, tenant: str) -> None:
    """The first worker is slow, not dead: past its lock a retry takes the claim over, and both run."""
    store = await design(name, pool, redis, prefix)
    slow = await store.claim(tenant, "slow", FP, EPOCH, payment=PAYMENT)
    retry = await store.claim(tenant, "slow", FP, EPOCH + POLICY.lock_timeout_us, payment=PAYMENT)
    assert retry.outcome == Outcome.RECOVER
    responses = await asyncio.gather(*(store.pay(c, PAYMENT, EPOCH + POLICY.lock_timeout_us)
                                       for c in [slow, retry] * 5))
    assert len(set(responses)) == 1 and responses[0].status == 201
    assert await effects(pool, tenant) == (1, 1)


@pytest.mark.parametrize(("name", "expected"), [("redis", (1, 1)), ("postgres", (1, 1)), ("none", (2, 1))])
async def test_a_charge_that_times_out_after_its_effect_is_charged_once(name: str, expected: tuple[int, int], pool: Pool,
                                                                        redis: Redis, prefix: str, tenant: str) -> None:
    store = await design(name, pool, redis, prefix)
    history = History()
    await attempt(store, history, tenant, "timeout", EPOCH, fault=ProviderFault("timeout_after_effect"))
    assert history.ops[-1].type == "info"
    # The released claim is recovered by the immediate retry, which asks the provider with the same token.
    retry = await attempt(store, history, tenant, "timeout", EPOCH + 1)
    assert retry.outcome == (Outcome.EXECUTE if name == "none" else Outcome.RECOVER)
    assert history.ops[-1].type == "ok" and history.ops[-1].value["status"] == 201
    # The none design charges again and leaves the first charge without a payment: both are caught.
    assert await effects(pool, tenant) == expected
    safe = name != "none"
    assert [r.valid for r in check(history.ops, await read_state(pool, tenant))] == [safe, True, safe]


@pytest.mark.parametrize("name", ["redis", "postgres"])
async def test_a_declined_charge_is_stored_and_replayed(name: str, pool: Pool, redis: Redis, prefix: str,
                                                        tenant: str) -> None:
    store = await design(name, pool, redis, prefix)
    history = History()
    await attempt(store, history, tenant, "declined", EPOCH, fault=ProviderFault("fail"))
    declined = history.ops[-1].value
    assert declined["status"] == 402 and json.loads(declined["body"])["type"].endswith("/payment-declined")
    replay = await attempt(store, history, tenant, "declined", EPOCH + S)
    assert replay.outcome == Outcome.REPLAY and history.ops[-1].value["body"] == declined["body"]
    assert await effects(pool, tenant) == (0, 0)
    assert all(r.valid for r in check(history.ops, await read_state(pool, tenant)))


async def test_the_completer_rolls_back_an_abandoned_request_that_is_not_a_payment(pool: Pool, tenant: str) -> None:
    store = PostgresIdempotency(pool, POLICY)
    project = fingerprint("POST", "/v1/projects", b'{"name":"x"}')
    assert (await store.claim(tenant, "project", project, EPOCH)).outcome == Outcome.EXECUTE
    assert await completer.run_once(pool, EPOCH + POLICY.lock_timeout_us, policy=POLICY) == 1
    assert await store.record(tenant, "project") is None
    assert (await store.claim(tenant, "project", project, EPOCH + POLICY.lock_timeout_us)).outcome == Outcome.EXECUTE


# --- the reaper ---------------------------------------------------------------------------------------------

async def test_the_reaper_deletes_exactly_the_expired_keys(pool: Pool, tenant: str) -> None:
    store = PostgresIdempotency(pool, POLICY)
    ok = StoredResponse(201, (), b"{}")
    claimed_at = {f"k{i}": EPOCH + i * S for i in range(10)}
    for key, at in claimed_at.items():
        claim = await store.claim(tenant, key, FP, at)
        if key in ("k1", "k2", "k5", "k7"):
            await store.finish(claim, ok)
    # k0's abandoned claim is taken over late, which keeps it past its retention until its new lock ends.
    late = EPOCH + POLICY.retention_us - S
    assert (await store.claim(tenant, "k0", FP, late)).outcome == Outcome.RECOVER
    now = EPOCH + POLICY.retention_us + 4 * S  # k1..k4 are past retention
    assert await reaper.run_once(pool, now, batch=2) == 4
    left = {key for key in claimed_at if await store.record(tenant, key) is not None}
    assert left == {"k0", *(f"k{i}" for i in range(5, 10))}
    assert await reaper.run_once(pool, now) == 0
    assert await reaper.run_once(pool, late + POLICY.lock_timeout_us) == 6


async def test_the_completer_and_reaper_loops_run_until_stopped(pool: Pool, tenant: str) -> None:
    store = PostgresIdempotency(pool, POLICY)
    await store.claim(tenant, "loop", FP, EPOCH, payment=PAYMENT)
    now = [EPOCH + POLICY.lock_timeout_us]  # one clock for both processes, moved by the test
    stop = asyncio.Event()
    loops = asyncio.gather(completer.run_forever(pool, policy=POLICY, interval_s=0.01, stop=stop, clock=lambda: now[0]),
                           reaper.run_forever(pool, interval_s=0.01, stop=stop, clock=lambda: now[0]))
    async with asyncio.timeout(10):
        while (record := await store.record(tenant, "loop")) is None or record.state != State.FINISHED:
            await asyncio.sleep(0.01)
        now[0] = EPOCH + POLICY.retention_us
        while await store.record(tenant, "loop") is not None:
            await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(loops, 5)
    assert await effects(pool, tenant) == (1, 1)


# --- the provider -------------------------------------------------------------------------------------------

async def test_the_provider_dedupes_by_token_and_keeps_the_first_outcome(pool: Pool, tenant: str) -> None:
    first = await provider.charge(pool, tenant, 500, "USD", "tok-1", reference="k")
    again = await asyncio.gather(*(provider.charge(pool, tenant, 500, "USD", "tok-1") for _ in range(10)))
    assert {c.id for c in again} == {first.id}
    with pytest.raises(ProviderError):
        await provider.charge(pool, tenant, 501, "USD", "tok-1")
    # A token already charged gets its charge even while the provider declines new ones...
    assert (await provider.charge(pool, tenant, 500, "USD", "tok-1", ProviderFault("fail"))).id == first.id
    # ...and a declined token stays declined.
    with pytest.raises(ProviderError):
        await provider.charge(pool, tenant, 500, "USD", "tok-2", ProviderFault("fail"))
    with pytest.raises(ProviderError):
        await provider.charge(pool, tenant, 500, "USD", "tok-2")
    started = time.monotonic()
    slow = await provider.charge(pool, tenant, 700, "USD", "tok-3", ProviderFault("slow", delay_ms=50))
    assert time.monotonic() - started >= 0.05 and slow.status == provider.SUCCEEDED
    with pytest.raises(ProviderTimeout):
        await provider.charge(pool, tenant, 800, "USD", "tok-4", ProviderFault("timeout_after_effect"))
    charges = await provider.charges(pool, tenant)
    assert [(c.token, c.status) for c in charges] == [("tok-1", "succeeded"), ("tok-2", "failed"),
                                                      ("tok-3", "succeeded"), ("tok-4", "succeeded")]


def test_every_design_is_built_by_the_factory() -> None:
    assert DESIGNS == ("none", "redis", "postgres")
    with pytest.raises(ValueError, match="unknown idempotency design"):
        make_design("memory", pool=None, redis=None, prefix="p")  # type: ignore[arg-type]
