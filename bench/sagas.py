"""Sagas benchmark: the price of distribution, as checkouts per second.

Each saga design checks out `BATCH` orders at once (plenty of stock, no faults) through its own code
(reference_impl/sagas/designs.py: the same objects the service runs), and the round's throughput is
the batch over the time until every saga has ended. The baseline is the same writes in one local
transaction on one database holding the three participants' schemas (reserve, the payment and its
provider charge row, the shipment, the reservation's commit), `BATCH` of them at the same
concurrency (the pools' size). The ratio design / local is what spreading a checkout over three
databases and a saga log costs. No HTTP, no service: this measures coordination, not the web stack.

Lock hold: how long a hot SKU's stock row stays locked per transaction that locks it. For `twopc`, from the
coordinator log (`twopc.timings`: an attempt's start to its COMMIT PREPARED, the locks held through PREPARE);
for the saga designs, a probe times each inventory connection checkout during which a stock-locking
operation (`reserve`, `commit`, `release` of reference_impl/sagas/participants.py) ran, from the
connection's acquisition to its release, so both are upper bounds of the same thing. `twopc` runs only where
the server has `max_prepared_transactions` > 0 (the embedded one does); elsewhere the result says why not.

It runs on a database of its own (`saaslab_bench_sagas` and its participants' databases on the
configured or embedded server), dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import asyncpg

from reference_impl.common.db import Pool, migrate
from reference_impl.common.redis_client import make_redis
from reference_impl.sagas import participants as parts
from reference_impl.sagas.core import Item, Order, step_key
from reference_impl.sagas.designs import NoFaults, SagaDeps, make_design, policy_of
from reference_impl.sagas.orders import OrderLog
from reference_impl.sagas.participants import Participants, put_stock
from reference_impl.sagas.twopc import prepared_capacity, timings
from reference_impl.sagas.wiring import MIGRATIONS
from saaslab import patterns
from saaslab.results import LatencyHistogram
from saaslab.services import services_for
from saaslab.settings import Settings

DESIGNS = tuple(d.name for d in patterns.get("sagas").designs)
TWOPC = "twopc"
LOCKING = ("reserve", "commit", "release")
"""The participants' operations that lock stock rows until their transaction ends."""
BATCH = 200
POOL = 10
SKUS = 20
BENCH_DB = "saaslab_bench_sagas"
LOCAL_SCHEMAS = (*parts.MIGRATIONS["inventory"], *parts.MIGRATIONS["payments"], *parts.MIGRATIONS["shipping"])


def _url(base: str, db: str) -> str:
    head, _, _ = base.rpartition("/")
    return f"{head}/{db}"


def _order(tenant: str, i: int) -> Order:
    return Order(str(uuid.uuid4()), tenant, (Item(f"sku-{i % SKUS}", 1),), 1000, "EUR")


async def _stock(conn: asyncpg.Connection, tenant: str) -> None:
    for n in range(SKUS):
        await put_stock(conn, tenant, f"sku-{n}", 10**9)


_locking: ContextVar[list[bool] | None] = ContextVar("locking", default=None)


@contextlib.contextmanager
def _lock_probe(participants: Participants, holds: LatencyHistogram) -> Iterator[None]:
    """Time each inventory connection checkout in which a stock-locking operation ran (see the module docstring)."""
    pool = participants.pools["inventory"]
    connection = pool.connection
    originals = {name: getattr(parts, name) for name in LOCKING}

    def flagged(op: Any) -> Any:
        async def run(*args: Any, **kwargs: Any) -> Any:
            if (flag := _locking.get()) is not None:
                flag[0] = True
            return await op(*args, **kwargs)
        return run

    @contextlib.asynccontextmanager
    async def timed(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        flag = [False]
        token = _locking.set(flag)
        try:
            async with connection(*args, **kwargs) as conn:
                acquired = time.perf_counter()
                yield conn
            if flag[0]:
                holds.record_s(time.perf_counter() - acquired)
        finally:
            _locking.reset(token)

    pool.connection = timed  # type: ignore[method-assign]
    for name, op in originals.items():
        setattr(parts, name, flagged(op))
    try:
        yield
    finally:
        del pool.connection
        for name, op in originals.items():
            setattr(parts, name, op)


async def _design_round(settings: Settings, name: str, pool: Pool, participants: Participants,
                        holds: LatencyHistogram) -> float:
    tenant = "bench-" + uuid.uuid4().hex[:8]
    async with participants.transaction("inventory") as conn:
        await _stock(conn, tenant)
    design = make_design(name, SagaDeps(settings.model_copy(update={"saga": name}), pool, participants,
                                        OrderLog(pool), policy_of(settings), NoFaults()))
    orders = [_order(tenant, i) for i in range(BATCH)]
    await design.open()
    try:
        with _lock_probe(participants, holds) if name != TWOPC else contextlib.nullcontext():
            started = time.perf_counter()
            records = await asyncio.gather(*(design.start(o, f"k{i}", time.time_ns() // 1000)
                                             for i, o in enumerate(orders)))
            if not await design.settle(120.0):
                raise RuntimeError(f"{name}: the batch did not end within 120 s")
            took = time.perf_counter() - started
    finally:
        await design.close()
    if name == TWOPC:
        for held_us, _doubt in await timings(pool, [r.id for r in records]):
            holds.record_us(held_us)
    return BATCH / took


async def _local_checkout(pool: Pool, order: Order) -> None:
    """The same writes as a saga's steps, in one transaction on one database."""
    async with pool.connection() as conn, conn.transaction():
        assert await parts.reserve(conn, order, step_key(order.id, "reserve")) == "ok"
        key = step_key(order.id, "charge")
        await conn.execute("INSERT INTO lab_provider.charges (id, account, token, reference, amount, currency, status)"
                           " VALUES ($1, $2, $3, $4, $5, $6, 'succeeded')", "ch_" + uuid.uuid4().hex[:24],
                           order.tenant_id, key, order.id, order.amount, order.currency)
        await conn.execute("INSERT INTO saga_payments.payments (key, saga_id, tenant_id, amount, currency, state)"
                           " VALUES ($1, $2, $3, $4, $5, 'charged')", key, order.id, order.tenant_id, order.amount,
                           order.currency)
        assert await parts.schedule(conn, order, step_key(order.id, "schedule")) == "ok"
        assert await parts.commit(conn, order, step_key(order.id, "reserve")) == "ok"


async def _local_round(pool: Pool) -> float:
    tenant = "bench-" + uuid.uuid4().hex[:8]
    async with pool.connection() as conn:
        await _stock(conn, tenant)
    started = time.perf_counter()
    await asyncio.gather(*(_local_checkout(pool, _order(tenant, i)) for i in range(BATCH)))
    return BATCH / (time.perf_counter() - started)


async def _measure(settings: Settings, seconds: float) -> tuple[dict[str, list[float]], dict[str, LatencyHistogram],
                                                                dict[str, str]]:
    assert settings.database_url
    main_url = _url(settings.database_url, BENCH_DB)
    local_url = _url(settings.database_url, f"{BENCH_DB}_local")
    admin = await asyncpg.connect(settings.database_url)
    try:
        for db in (BENCH_DB, f"{BENCH_DB}_local"):
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", db):
                await admin.execute(f'CREATE DATABASE "{db}"')
        pool, local = Pool(main_url, min_size=1, max_size=POOL), Pool(local_url, min_size=1, max_size=POOL)
        await pool.open()
        await local.open()
        await migrate(pool, MIGRATIONS)
        await migrate(local, LOCAL_SCHEMAS)
        participants = await Participants.open(main_url, pool_size=POOL)
        skipped = {} if await prepared_capacity(pool) > 0 else {
            TWOPC: "the server's max_prepared_transactions is 0 (twopc needs it > 0)"}
        designs = [d for d in DESIGNS if d not in skipped]
        rates: dict[str, list[float]] = {name: [] for name in ("local", *designs)}
        holds = {name: LatencyHistogram() for name in designs}
        try:
            deadline = time.monotonic() + seconds * (1 + len(designs))
            while time.monotonic() < deadline or min(len(r) for r in rates.values()) < 2:
                rates["local"].append(await _local_round(local))
                for name in designs:
                    rates[name].append(await _design_round(settings, name, pool, participants, holds[name]))
        finally:
            await participants.close()
            await pool.close()
            await local.close()
    finally:
        drop = [r["datname"] for r in await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname = $1 OR starts_with(datname, $2)", BENCH_DB, f"{BENCH_DB}_")]
        for db in drop:
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()
    return rates, holds, skipped


def run(out: Path, *, seconds: float = 4.0) -> dict:
    with services_for(Settings()) as settings:
        bench = settings.model_copy(update={"redis_prefix": f"saaslab-bench-{uuid.uuid4().hex[:8]}"})
        try:
            rates, holds, skipped = asyncio.run(_measure(bench, seconds))
        finally:
            asyncio.run(_drop_streams(bench))
    local = statistics.median(rates["local"])
    rows = [{"design": name, "checkouts_per_s": statistics.median(r), "rounds": len(r),
             "ratio_to_local": statistics.median(r) / local,
             **({"lock_hold_p50_ms": holds[name].percentile_ms(50.0), "lock_hold_p99_ms": holds[name].percentile_ms(99.0),
                 "locks": holds[name].count} if name in holds else {})} for name, r in rates.items()]
    md = [f"Checkouts per second, {BATCH} at once per round (pools of {POOL} connections), median over rounds; "
          "`local` is the same writes in one transaction on one database. The ratio is the price of "
          "distribution (a saga over three databases and a log). No faults, plenty of stock. Stock lock held: "
          "per transaction that locks stock rows (twopc: an attempt's start to its COMMIT PREPARED; the sagas: "
          "the inventory connection's checkout around the locking operation), over every round.", "",
          "| design | checkouts/s | ratio to local | stock lock held p50 | p99 | rounds |",
          "| --- | --- | --- | --- | --- | --- |"]
    md += [f"| {r['design']} | {r['checkouts_per_s']:.0f} | {r['ratio_to_local']:.2f} | "
           + (f"{r['lock_hold_p50_ms']:.2f} ms | {r['lock_hold_p99_ms']:.2f} ms" if "locks" in r else "n/a | n/a")
           + f" | {r['rounds']} |" for r in rows]
    md += [f"\n{design} was not measured: {why}." for design, why in skipped.items()]
    result = {"benchmark": "sagas", "designs": rows, "skipped": skipped, "markdown": md, "batch": BATCH,
              "pool": POOL}
    (out / "sagas.json").write_text(json.dumps(result, indent=2))
    return result


async def _drop_streams(settings: Settings) -> None:
    """The choreography rounds' streams, under the run's own prefix."""
    redis = make_redis(settings)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}:*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()
