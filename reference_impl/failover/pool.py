"""A connection pool that follows the primary, and knows a fenced one when it sees it.

Pools that health-check with `SELECT 1` stay pinned to a demoted primary that still answers it while
every write fails with SQLSTATE 25006 (read_only_sql_transaction). `PrimaryPool` looks for the
primary itself: among its members, the first that is out of recovery and not read-only. Any write
that fails on a connection error, a timeout, 25006 or a shutting-down server drops the pool and the
next call looks again. What the caller learns is what Jepsen needs to know:

* `WriteRefused`: the write certainly did not happen (no primary found, 25006, refused at connect);
* `WriteUnknown`: it may have happened (the connection went or timed out after the write was sent).

Both carry `retry_after_s`, which the service turns into 503 problem+json with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import asyncpg

CONNECTION_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                     asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.CannotConnectNowError,
                     asyncpg.exceptions.CrashShutdownError, asyncpg.exceptions.InternalClientError)
PROBE_SQL = "SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'"


class PrimaryUnavailable(Exception):
    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class WriteRefused(PrimaryUnavailable):
    """Certainly not written."""


class WriteUnknown(PrimaryUnavailable):
    """Sent, with no answer: it may have been written."""


class PrimaryPool:
    def __init__(self, members: Mapping[str, Mapping[str, Any]], *, timeout_s: float = 1.0, size: int = 4,
                 retry_after_s: int = 1, recheck_s: float = 0.0) -> None:
        """`recheck_s`: after a search found no primary, calls within this long are refused at once rather
        than each searching again. A service's requests arrive far faster than a failover ends; without it
        they queue behind one another's searches, each up to `timeout_s`."""
        self.members = dict(members)
        self.timeout_s = timeout_s
        self.size = size
        self.retry_after_s = retry_after_s
        self.recheck_s = recheck_s
        self.primary: str | None = None
        self.searches = 0
        """How many times it looked for the primary."""
        self._missed_at: float | None = None
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def _probe(self, name: str) -> bool:
        try:
            conn = await asyncpg.connect(**self.members[name], timeout=self.timeout_s)
        except (*CONNECTION_ERRORS, asyncpg.PostgresError):
            return False
        try:
            return bool(await conn.fetchval(PROBE_SQL, timeout=self.timeout_s))
        except (*CONNECTION_ERRORS, asyncpg.PostgresError):
            return False
        finally:
            conn.terminate()

    async def _current(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is not None:
                return self._pool
            names = list(self.members)
            if self._missed_at is not None and time.monotonic() - self._missed_at < self.recheck_s:
                raise WriteRefused("no writable primary among " + ", ".join(names) + " a moment ago",
                                   self.retry_after_s)
            self.searches += 1
            found = await asyncio.gather(*(self._probe(n) for n in names))
            primary = next((n for n, ok in zip(names, found, strict=True) if ok), None)
            if primary is None:
                self._missed_at = time.monotonic()
                raise WriteRefused("no writable primary among " + ", ".join(names), self.retry_after_s)
            self._missed_at = None
            try:
                self._pool = await asyncio.wait_for(asyncpg.create_pool(
                    **self.members[primary], min_size=1, max_size=self.size, timeout=self.timeout_s,
                    command_timeout=self.timeout_s), self.timeout_s * 2)
            except (*CONNECTION_ERRORS, asyncpg.PostgresError) as err:
                raise WriteRefused(f"primary {primary} refused connections: {err}", self.retry_after_s) from None
            self.primary = primary
            return self._pool

    def drop(self) -> None:
        """Forget the primary: the next call looks for it again."""
        pool, self._pool, self.primary = self._pool, None, None
        if pool is not None:
            pool.terminate()

    async def fetch(self, sql: str, *args: Any, write: bool = True) -> tuple[list[asyncpg.Record], str]:
        """Run `sql` on the primary: (rows, the primary's name)."""
        pool = await self._current()
        name = self.primary or "?"
        sent = False
        try:
            async with pool.acquire(timeout=self.timeout_s) as conn:
                sent = True
                return await conn.fetch(sql, *args, timeout=self.timeout_s), name
        except asyncpg.exceptions.ReadOnlySQLTransactionError:
            self.drop()
            raise WriteRefused(f"{name} is read-only (25006): fenced or demoted", self.retry_after_s) from None
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as err:
            # Any other server error (a backend terminated by a fence, a server in recovery) also means
            # this primary cannot be trusted now; a write already sent may have happened.
            self.drop()
            kind = WriteUnknown if (sent and write) else WriteRefused
            raise kind(f"{name}: {type(err).__name__}", self.retry_after_s) from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 2)
            pool.terminate()
