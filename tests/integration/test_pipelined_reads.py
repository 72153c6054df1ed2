"""Pipelined reads: concurrent reads share one round trip, and each still gets exactly its own rows.

The hot path's reads go through `PipelinedReads` (common/db.py) under every isolation design, so
these tests check what batching must never change: a read sees only its tenant's rows even in a
batch with other tenants' reads, its rows come back to it alone (none, one or a page), one read's
error stays its own, and nothing a batch sets on a connection outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg
import pytest

from reference_impl.app import MIGRATIONS
from reference_impl.common.auth import Tenant
from reference_impl.common.db import PipelinedReads, Pool, migrated_pool
from reference_impl.common.faults import Faults
from reference_impl.common.metrics import Metrics
from reference_impl.tenancy.repository import (
    FAULT_POINTS,
    PAYMENTS,
    PROJECTS,
    Store,
    TenantDirectory,
    make_store,
)
from saaslab.settings import Settings

pytestmark = pytest.mark.integration

SAFE_DESIGNS = ("filtered", "rls", "schema")


def open_pool(settings: Settings, max_size: int = 4) -> contextlib.AbstractAsyncContextManager[Pool]:
    return migrated_pool(settings.database_url or "", MIGRATIONS, max_size=max_size)


async def _tenant(pool: Pool, store: Store) -> Tenant:
    tenant, _ = await TenantDirectory(pool).create(f"t-{uuid.uuid4().hex[:6]}", "pro", None)
    await store.provision(tenant)
    return tenant


@pytest.mark.parametrize("design", SAFE_DESIGNS)
async def test_a_batch_of_several_tenants_reads_gives_each_only_its_own_rows(settings: Settings, design: str) -> None:
    async with open_pool(settings) as pool:
        store = make_store(design, pool, Faults(dict(FAULT_POINTS), Metrics()))
        a, b = await _tenant(pool, store), await _tenant(pool, store)
        a_rows = [await store.insert(a, PROJECTS, {"name": f"a{i}"}) for i in range(3)]
        b_rows = [await store.insert(b, PROJECTS, {"name": f"b{i}"}) for i in range(2)]
        batches, reads = store.reads.batches, store.reads.reads

        # Every tenant asks for every id, its own and the other's, all in the same turn of the loop.
        asks = [(t, row[0]) for t in (a, b) for row in a_rows + b_rows] + [(a, uuid.uuid4())]
        got = await asyncio.gather(*(store.get(t, PROJECTS, object_id) for t, object_id in asks))
        expected = {(a.id, r[0]): tuple(r) for r in a_rows} | {(b.id, r[0]): tuple(r) for r in b_rows}
        assert [tuple(g) if g is not None else None for g in got] == [
            expected.get((t.id, object_id)) for t, object_id in asks]

        pages = await asyncio.gather(store.page(a, PROJECTS, 10, None), store.page(b, PROJECTS, 10, None),
                                     store.page(a, PROJECTS, 2, None), store.page(b, PAYMENTS, 10, None))
        assert [[tuple(r) for r in page] for page in pages] == [
            [tuple(r) for r in a_rows], [tuple(r) for r in b_rows], [tuple(r) for r in a_rows[:2]], []]

        # One pipeline per statement: the gets share one under filtered and rls (the tenant is a
        # parameter), one per tenant under schema (each tenant's tables are its own).
        get_batches = 2 if design == "schema" else 1
        page_batches = 3 if design == "schema" else 2  # first pages of projects (a's two share one), of payments
        assert store.reads.batches - batches == get_batches + page_batches
        assert store.reads.reads - reads == len(asks) + len(pages)


async def test_one_reads_error_is_its_own(settings: Settings) -> None:
    async with open_pool(settings) as pool:
        reads = PipelinedReads(pool)
        sql = "SELECT $1::int4, 12 / $2::int4"
        results = await asyncio.gather(*(reads.fetch(sql, (d,), one=True) for d in (1, 0, 3, 4)),
                                       return_exceptions=True)
        assert [tuple(r) if isinstance(r, tuple) else type(r) for r in results] == [
            (12,), asyncpg.DivisionByZeroError, (4,), (3,)]
        # One batch (run again read by read after its pipeline failed) carrying the four reads.
        assert (reads.batches, reads.reads) == (1, 4)


async def test_rows_come_back_to_the_read_that_asked_in_order(settings: Settings) -> None:
    async with open_pool(settings) as pool:
        reads = PipelinedReads(pool)
        sql = "SELECT $1::int4, n FROM generate_series(1, $2::int4) AS n ORDER BY n DESC"
        results = await asyncio.gather(*(reads.fetch(sql, (n,)) for n in (3, 0, 1, 5)))
        assert [[r[0] for r in rows] for rows in results] == [[3, 2, 1], [], [1], [5, 4, 3, 2, 1]]
        assert reads.batches == 1


async def test_big_batches_are_split_and_a_gone_reader_does_not_stop_the_others(settings: Settings) -> None:
    async with open_pool(settings) as pool:
        reads = PipelinedReads(pool, max_batch=3)
        sql = "SELECT $1::int4, $2::int4 * 2"
        futures = [reads.fetch(sql, (i,), one=True) for i in range(7)]
        futures[4].cancel()  # its request went away before the batch left
        done = await asyncio.gather(*futures, return_exceptions=True)
        assert isinstance(done[4], asyncio.CancelledError)
        assert [r[0] for i, r in enumerate(done) if i != 4] == [0, 2, 4, 6, 10, 12]
        assert reads.batches == 3


async def test_what_a_batch_sets_ends_with_it(settings: Settings) -> None:
    async with open_pool(settings, max_size=1) as pool:
        reads = PipelinedReads(pool)
        # What the rls design's read functions do: set a value transaction-locally inside the read.
        setting = "SELECT $1::int4, set_config('saaslab.probe', 'x', true)"
        probe = "SELECT $1::int4, current_setting('saaslab.probe', true)"
        assert await reads.fetch(setting, (), one=True) == ("x",)
        assert (await reads.fetch(probe, (), one=True))[0] in (None, "")
        async with pool.connection() as conn:
            assert not conn.is_in_transaction()


async def test_rls_reads_run_as_the_app_role_and_leave_no_tenant_behind(settings: Settings) -> None:
    async with open_pool(settings, max_size=1) as pool:
        store = make_store("rls", pool, Faults(dict(FAULT_POINTS), Metrics()))
        a, b = await _tenant(pool, store), await _tenant(pool, store)
        row = await store.insert(a, PROJECTS, {"name": "mine"})
        assert tuple(await store.get(a, PROJECTS, row[0])) == tuple(row)
        assert await store.get(b, PROJECTS, row[0]) is None
        async with pool.connection() as conn:  # the one connection the reads used
            assert await conn.fetchval("SELECT current_setting('saaslab.tenant_id', true)") in (None, "")
            functions = await conn.fetch(
                "SELECT p.proname, pg_get_userbyid(p.proowner) AS owner, p.prosecdef, r.rolbypassrls "
                "FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner "
                "WHERE p.pronamespace = 'saaslab_rls'::regnamespace ORDER BY p.proname")
            assert [f["proname"] for f in functions] == sorted(
                f"{t}_{kind}" for t in ("projects", "payments") for kind in ("get", "first_page", "next_page"))
            assert {(f["owner"], f["prosecdef"], f["rolbypassrls"]) for f in functions} == {
                ("saaslab_app", True, False)}
            # Called directly with another tenant, a function still finds nothing: the policies decide.
            assert await conn.fetch("SELECT * FROM saaslab_rls.projects_get($1, $2)", b.id, row[0]) == []
            assert len(await conn.fetch("SELECT * FROM saaslab_rls.projects_first_page($1, 10)", a.id)) == 1
