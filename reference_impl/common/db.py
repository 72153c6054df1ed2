"""PostgreSQL: the connection pool and start-up migrations."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from psycopg_pool import AsyncConnectionPool

from saaslab.settings import Settings

# pg_advisory_xact_lock key for migrations: several uvicorn workers start at once and must not
# race each other's CREATE ... IF NOT EXISTS (which is not safe under concurrency).
MIGRATION_LOCK_KEY = 0x5AA5_1AB0


def make_pool(settings: Settings) -> AsyncConnectionPool:
    """An unopened pool (open it in the lifespan). Autocommit: a single statement is one round trip;
    multi-statement work opens an explicit transaction."""
    if not settings.database_url:
        raise ValueError("settings.database_url is not set")
    return AsyncConnectionPool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=max(settings.db_pool_max, settings.db_pool_min),
        kwargs={"autocommit": True, "options": "-c TimeZone=UTC"},
        open=False,
        name="saaslab",
    )


async def migrate(pool: AsyncConnectionPool, scripts: Iterable[Path]) -> None:
    """Apply idempotent SQL scripts in one transaction, serialised across processes by an advisory lock."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        for script in scripts:
            # No parameters: psycopg sends it with the simple protocol, so one script may hold many statements.
            await conn.execute(script.read_text())  # type: ignore[arg-type]


async def ping(pool: AsyncConnectionPool, timeout_s: float) -> None:
    async with pool.connection(timeout=timeout_s) as conn:
        await conn.execute("SELECT 1")
