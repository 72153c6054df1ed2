"""The tenant directory's cache: an expired entry is reloaded by one query, however many requests find
it missing at once (no stampede on the tenants table), and a request that goes away does not cancel
the others' lookup."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from reference_impl.app import MIGRATIONS
from reference_impl.common.db import Pool, migrated_pool
from reference_impl.tenancy.repository import TenantDirectory
from saaslab.settings import Settings

pytestmark = pytest.mark.integration

TTL_S = 0.05
CONCURRENT = 50


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[Pool]:
    async with migrated_pool(settings.database_url or "", MIGRATIONS, max_size=8) as pool:
        yield pool


async def test_concurrent_misses_share_one_lookup_each_time_the_entry_expires(pool: Pool) -> None:
    directory = TenantDirectory(pool, cache_ttl_s=TTL_S)
    tenant, api_key = await directory.create(f"t-{uuid.uuid4().hex[:6]}", "pro", {"requests": 5, "window_s": 1})
    for expected_lookups in (1, 2):
        found = await asyncio.gather(*(directory.by_api_key(api_key) for _ in range(CONCURRENT)))
        assert directory.lookups == expected_lookups
        assert all(t is found[0] for t in found)  # one Tenant object: the limiter sees one set of limits
        assert found[0] is not None and found[0].id == tenant.id and found[0].limits == {"requests": 5, "window_s": 1}
        assert await directory.by_api_key(api_key) is found[0] and directory.lookups == expected_lookups  # cached
        await asyncio.sleep(TTL_S * 1.5)


async def test_unknown_keys_are_not_cached_but_concurrent_ones_share_a_lookup(pool: Pool) -> None:
    directory = TenantDirectory(pool, cache_ttl_s=TTL_S)
    unknown = f"sk_unknown_{uuid.uuid4().hex}"
    assert await asyncio.gather(*(directory.by_api_key(unknown) for _ in range(CONCURRENT))) == [None] * CONCURRENT
    assert directory.lookups == 1
    assert await directory.by_api_key(unknown) is None and directory.lookups == 2


async def test_a_request_that_goes_away_does_not_cancel_the_others_lookup(pool: Pool) -> None:
    directory = TenantDirectory(pool, cache_ttl_s=TTL_S)
    tenant, api_key = await directory.create(f"t-{uuid.uuid4().hex[:6]}", "pro", None)
    first = asyncio.ensure_future(directory.by_api_key(api_key))
    await asyncio.sleep(0)  # the first request has started the lookup
    others = [asyncio.ensure_future(directory.by_api_key(api_key)) for _ in range(5)]
    first.cancel()
    found = await asyncio.gather(*others)
    assert first.cancelled()
    assert [t.id for t in found if t is not None] == [tenant.id] * 5 and directory.lookups == 1
