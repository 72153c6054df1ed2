"""The hot path's own clients: the auto-pipelined Redis script runner and the lean PostgreSQL pool."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio
import redis.exceptions

from reference_impl.common.db import Pool, PoolTimeout
from reference_impl.common.redis_client import ScriptRunner
from saaslab.settings import Settings

pytestmark = pytest.mark.integration

INCR_SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@contextlib.asynccontextmanager
async def runner_and_client(settings: Settings, script: str = INCR_SCRIPT) -> AsyncIterator[
        tuple[ScriptRunner, redis.asyncio.Redis, str]]:
    runner = ScriptRunner(settings.redis_url or "", script)
    client = redis.asyncio.Redis.from_url(settings.redis_url or "")
    key = f"{settings.redis_prefix}:{{hot-{uuid.uuid4().hex[:8]}}}:n"
    try:
        yield runner, client, key
    finally:
        await runner.close()
        await client.delete(key)
        await client.aclose()


async def test_concurrent_calls_each_get_their_own_atomic_answer(settings: Settings) -> None:
    async with runner_and_client(settings) as (runner, client, key):
        answers = await asyncio.gather(*(runner((key,), (1,)) for _ in range(500)))
        assert sorted(answers) == list(range(1, 501))  # every call counted once, no reply given twice
        assert int(await client.get(key)) == 500


async def test_a_script_redis_does_not_know_runs_as_eval_which_loads_it(settings: Settings) -> None:
    script = f"-- {uuid.uuid4()}\n" + INCR_SCRIPT  # a script no other test has loaded
    async with runner_and_client(settings, script) as (runner, client, key):
        assert await client.script_exists(runner.sha) == [False]
        assert await asyncio.gather(*(runner((key,), (10,)) for _ in range(3))) == [10, 20, 30]
        assert await client.script_exists(runner.sha) == [True]
        assert await runner((key,), (1,)) == 31


async def test_a_killed_connection_is_replaced_on_the_next_call(settings: Settings) -> None:
    async with runner_and_client(settings) as (runner, client, key):
        assert await runner((key,), (1,)) == 1
        conn = runner._conn
        assert conn is not None and conn._transport is not None
        host, port = conn._transport.get_extra_info("sockname")[:2]
        assert await client.client_kill(f"{host}:{port}")
        for _ in range(50):  # the runner learns of the close from the event loop
            if conn.closed:
                break
            await asyncio.sleep(0.01)
        assert conn.closed
        assert await runner((key,), (1,)) == 2
        assert runner._conn is not conn


async def test_a_silent_redis_fails_calls_with_a_timeout(settings: Settings) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def mute(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    runner = ScriptRunner(f"redis://127.0.0.1:{port}/0", INCR_SCRIPT, reply_timeout_s=0.2)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(redis.exceptions.TimeoutError):
            await runner(("k",), (1,))
        assert 0.2 <= asyncio.get_running_loop().time() - started < 2.0
    finally:
        await runner.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_an_unreachable_redis_is_a_connection_error(settings: Settings) -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()  # nothing listens on `port` any more
    runner = ScriptRunner(f"redis://127.0.0.1:{port}/0", INCR_SCRIPT)
    try:
        results = await asyncio.gather(*(runner(("k",), (1,)) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, redis.exceptions.ConnectionError) for r in results)
    finally:
        await runner.close()


@contextlib.asynccontextmanager
async def open_pool(settings: Settings, max_size: int = 2) -> AsyncIterator[Pool]:
    pool = Pool(settings.database_url or "", min_size=1, max_size=max_size, acquire_timeout_s=0.3)
    await pool.open()
    try:
        yield pool
    finally:
        await pool.close()


async def test_a_connection_left_in_a_transaction_is_never_handed_out_again(settings: Settings) -> None:
    async with open_pool(settings, max_size=1) as pool:
        async with pool.connection() as conn:
            await conn.execute("BEGIN; SET LOCAL application_name = 'leaked'")
            leaked_pid = conn.get_server_pid()
        async with pool.connection() as conn:
            assert conn.get_server_pid() != leaked_pid
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SHOW application_name") == "saaslab"


async def test_errors_of_postgres_or_the_caller_keep_the_connection(settings: Settings) -> None:
    async with open_pool(settings, max_size=1) as pool:
        async with pool.connection() as conn:
            pid = conn.get_server_pid()
        with pytest.raises(asyncpg.UndefinedTableError):
            async with pool.connection() as conn:
                await conn.fetch("SELECT * FROM no_such_table")
        with pytest.raises(LookupError):
            async with pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT 1")
                raise LookupError("the caller's own error")
        async with pool.connection() as conn:
            assert conn.get_server_pid() == pid


async def test_a_query_cancelled_midway_does_not_poison_the_pool(settings: Settings) -> None:
    async with open_pool(settings, max_size=1) as pool:

        async def slow() -> None:
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_sleep(5)")

        task = asyncio.ensure_future(slow())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with pool.connection() as conn:
            assert await conn.fetchval("SELECT 41 + 1") == 42


async def test_an_exhausted_pool_times_out_and_recovers(settings: Settings) -> None:
    async with open_pool(settings, max_size=2) as pool:
        async with pool.connection(), pool.connection():
            with pytest.raises(PoolTimeout):
                async with pool.connection():
                    pass
        results = await asyncio.gather(*(_select_one(pool) for _ in range(20)))
        assert results == [1] * 20


async def _select_one(pool: Pool) -> int:
    async with pool.connection() as conn:
        return int(await conn.fetchval("SELECT 1"))
