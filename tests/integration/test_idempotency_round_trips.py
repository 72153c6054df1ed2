"""The round trips each store operation makes on the real servers are the ones round_trips.py declares,
which the simulated store charges (scenarios/idempotency/stores.py): the simulation takes the service's
round trips because both read them from one table, and this test keeps the table true."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from reference_impl.common.db import Pool, migrate
from reference_impl.idempotency import completer, postgres, provider
from reference_impl.idempotency.core import Outcome, Policy, StoredResponse, fingerprint
from reference_impl.idempotency.designs import NoIdempotency
from reference_impl.idempotency.ledger import PaymentRequest
from reference_impl.idempotency.postgres import PostgresIdempotency
from reference_impl.idempotency.redis_store import RedisIdempotency
from reference_impl.idempotency.round_trips import POSTGRES, REDIS, ROUND_TRIPS, cost
from saaslab.settings import Settings

pytestmark = pytest.mark.integration

EPOCH = 1_700_000_000_000_000
S = 1_000_000
POLICY = Policy(retention_us=600 * S, lock_timeout_us=10 * S, conflict_retry_after_s=1)
PAYMENT = PaymentRequest(1999, "EUR")
FP = fingerprint("POST", "/v1/payments", b'{"amount":1999,"currency":"EUR"}')
OTHER = fingerprint("POST", "/v1/payments", b'{"amount":2000,"currency":"EUR"}')
OK = StoredResponse(201, (), b"{}")


class CountingRedis(Redis):
    """A real client that counts the commands it sends (each one round trip: nothing is pipelined here)."""

    sent = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent += 1
        return await super().execute_command(*args, **options)


class Trips:
    """Round trips per server while an operation runs: statements on the one PostgreSQL connection (each
    one round trip once prepared, as in a running service), commands of the Redis client."""

    def __init__(self, redis: CountingRedis) -> None:
        self.statements = 0
        self.redis = redis

    def log(self, _query: Any) -> None:
        self.statements += 1

    async def __call__(self, operation: Awaitable[Any]) -> tuple[dict[str, int], Any]:
        await asyncio.sleep(0)  # asyncpg calls query loggers with call_soon: count earlier statements first
        pg, commands = self.statements, self.redis.sent
        result = await operation
        await asyncio.sleep(0)
        return {POSTGRES: self.statements - pg, REDIS: self.redis.sent - commands}, result


@pytest_asyncio.fixture
async def one_connection(settings: Settings) -> AsyncIterator[tuple[Pool, list[Callable[[Any], None]]]]:
    """A pool of exactly one connection, so every statement of the store goes through its query logger."""
    assert settings.database_url
    pool = Pool(settings.database_url, min_size=1, max_size=1)
    await pool.open()
    await migrate(pool, [provider.SCHEMA, postgres.SCHEMA])
    loggers: list[Callable[[Any], None]] = []
    async with pool.connection() as conn:
        conn.add_query_logger(lambda query: [log(query) for log in loggers])
    yield pool, loggers
    await pool.close()


@pytest_asyncio.fixture
async def trips(one_connection: tuple[Pool, list[Callable[[Any], None]]], settings: Settings
                ) -> AsyncIterator[Trips]:
    assert settings.redis_url
    redis = CountingRedis.from_url(settings.redis_url)
    counter = Trips(redis)
    one_connection[1].append(counter.log)
    yield counter
    await redis.aclose()


def expected(design: str, operation: str, variant: str | None = None) -> dict[str, int]:
    spent = cost(design, operation, variant)
    return {POSTGRES: 0, REDIS: 0, spent.server: spent.trips}


async def test_postgres_makes_the_declared_round_trips(one_connection: tuple[Pool, Any], trips: Trips) -> None:
    pool = one_connection[0]
    tenant = str(uuid.uuid4())
    store = PostgresIdempotency(pool, POLICY)
    claim = store.claim
    seen, first = await trips(claim(tenant, "k", FP, EPOCH, payment=PAYMENT))
    assert first.outcome == Outcome.EXECUTE and seen == expected("postgres", "claim")
    for fp, outcome in ((FP, Outcome.CONFLICT), (OTHER, Outcome.MISMATCH)):
        seen, got = await trips(claim(tenant, "k", fp, EPOCH + 1))
        assert got.outcome == outcome and seen == expected("postgres", "claim")
    seen, _ = await trips(store.release(first, EPOCH + 2))
    assert seen == expected("postgres", "release")
    # A retry past the lock: the claim statement, then the row-locked take-over.
    seen, recovered = await trips(claim(tenant, "k", FP, EPOCH + 3, payment=PAYMENT))
    assert recovered.outcome == Outcome.RECOVER
    both = expected("postgres", "claim")[POSTGRES] + expected("postgres", "lock", "take_over")[POSTGRES]
    assert seen == {POSTGRES: both, REDIS: 0}
    # Phase 2 and the reads a resumed payment makes.
    charge = await provider.charge(pool, tenant, PAYMENT.amount, PAYMENT.currency, recovered.token, reference="k")
    seen, paid = await trips(store.record_charge(recovered, charge))
    assert paid is not None and seen == expected("postgres", "record")
    seen, again = await trips(store.record_charge(recovered, charge))
    assert again is None and seen == expected("postgres", "record")
    for read in (store.payment_of, store.stored):
        seen, _ = await trips(read(recovered))
        assert seen == expected("postgres", read.__name__)
    seen, _ = await trips(store.finish(recovered, OK))
    assert seen == expected("postgres", "finish")
    seen, _ = await trips(store.finish(first, StoredResponse(500, (), b"late")))
    assert seen == expected("postgres", "finish", "missed")
    seen, replay = await trips(claim(tenant, "k", FP, EPOCH + 4))
    assert replay.outcome == Outcome.REPLAY and seen == expected("postgres", "claim")
    # Past retention a new request replaces the row, under its lock.
    seen, fresh = await trips(claim(tenant, "k", OTHER, EPOCH + POLICY.retention_us))
    assert fresh.outcome == Outcome.EXECUTE
    both = expected("postgres", "claim")[POSTGRES] + expected("postgres", "lock", "replace")[POSTGRES]
    assert seen == {POSTGRES: both, REDIS: 0}


async def test_the_completer_makes_the_declared_round_trips(one_connection: tuple[Pool, Any], trips: Trips) -> None:
    pool = one_connection[0]
    tenant = str(uuid.uuid4())
    store = PostgresIdempotency(pool, POLICY)
    await store.claim(tenant, "project", OTHER, EPOCH)  # not a payment: rolled back
    abandoned_at = EPOCH + POLICY.lock_timeout_us
    seen, taken = await trips(store.take_over(tenant, "project", abandoned_at))
    assert taken is not None and seen == expected("postgres", "take_over")
    seen, missed = await trips(store.take_over(tenant, "project", abandoned_at))
    assert missed is None and seen == expected("postgres", "take_over", "missed")
    later = abandoned_at + POLICY.lock_timeout_us
    seen, done = await trips(completer.run_once(pool, later, policy=POLICY))
    assert done == 1
    pass_trips = sum(expected("postgres", op)[POSTGRES] for op in ("scan", "take_over", "roll_back"))
    assert seen == {POSTGRES: pass_trips, REDIS: 0}
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM idempotency_keys WHERE tenant_id = $1", tenant)


async def test_redis_and_none_make_the_declared_round_trips(one_connection: tuple[Pool, Any], trips: Trips,
                                                            settings: Settings) -> None:
    pool = one_connection[0]
    tenant = str(uuid.uuid4())
    prefix = f"{settings.redis_prefix}:trips{uuid.uuid4().hex[:8]}"
    charge = provider.Charge("ch_x", tenant, "tok", "k", PAYMENT.amount, PAYMENT.currency, provider.SUCCEEDED)
    redis = RedisIdempotency(trips.redis, pool, prefix, POLICY)
    await redis.load()
    none = NoIdempotency(pool)
    for name, store in (("redis", redis), ("none", none)):
        seen, claim = await trips(store.claim(tenant, "k", FP, EPOCH))
        assert claim.outcome == Outcome.EXECUTE and seen == expected(name, "claim")
        seen, paid = await trips(store.record_charge(claim, charge))
        assert paid is not None and seen == expected(name, "record")
        seen, _ = await trips(store.release(claim, EPOCH + 1))
        assert seen == expected(name, "release")
        seen, _ = await trips(store.finish(claim, OK))
        assert seen == expected(name, "finish")
        seen, replay = await trips(store.claim(tenant, "k", FP, EPOCH + 2))
        assert seen == expected(name, "claim")
        assert replay.outcome == (Outcome.REPLAY if name == "redis" else Outcome.EXECUTE)
    await trips.redis.delete(*[k async for k in trips.redis.scan_iter(match=f"{prefix}:*")])
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM idempotency_payments WHERE tenant_id = $1", tenant)


def test_every_declared_operation_names_a_known_server() -> None:
    assert set(ROUND_TRIPS) == {"none", "redis", "postgres"}
    assert {c.server for ops in ROUND_TRIPS.values() for c in ops.values()} <= {REDIS, POSTGRES}
