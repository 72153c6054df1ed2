"""PostgreSQL through asyncpg: a lean connection pool and start-up migrations.

Why not asyncpg's own `Pool`: its acquire/release (a queue, a proxy object, an inactivity timer
re-armed per release, and a reset query, i.e. a round trip, per release) cost about as much CPU as
the query itself on the hot path. This pool hands out plain connections from a list and keeps the
one guarantee that matters: a connection goes back to the pool only in a clean state (idle, no open
transaction, no operation in flight), otherwise it is terminated and replaced on demand. It does
not reset sessions: callers change session state only transaction-locally (`SET LOCAL`), which
ends with the transaction.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import asyncpg

from saaslab.settings import Settings

# pg_advisory_xact_lock key for migrations: several uvicorn workers start at once and must not
# race each other's CREATE ... IF NOT EXISTS (which is not safe under concurrency).
MIGRATION_LOCK_KEY = 0x5AA5_1AB0
CONNECT_TIMEOUT_S = 10.0
ACQUIRE_TIMEOUT_S = 30.0


class PoolTimeout(Exception):
    """No connection became free in time."""


class PoolClosed(Exception):
    """The pool was closed (the app is shutting down)."""


# Failures that mean PostgreSQL is unreachable or refusing work (answered 503), not a bug.
# OSError covers refused and reset connections and timeouts (TimeoutError is an OSError).
DB_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    OSError, PoolTimeout, PoolClosed, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


class Pool:
    """Up to `max_size` connections, `min_size` of them opened by `open()`; more opened on demand.

    `async with pool.connection() as conn:` checks one out. Leaving the block normally, or with an
    error PostgreSQL reported or the caller raised, returns the connection; after cancellation, a
    timeout or a broken socket it is terminated instead, since its protocol state is unknown.
    """

    def __init__(self, dsn: str, *, min_size: int, max_size: int,
                 acquire_timeout_s: float = ACQUIRE_TIMEOUT_S) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max(max_size, min_size)
        self._acquire_timeout_s = acquire_timeout_s
        self._idle: list[asyncpg.Connection] = []
        # A waiter gets a connection, or None: "a connection was dropped, open a new one yourself".
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._size = 0
        """Connections open or being opened."""
        self._closed = True

    async def open(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        # Each connect is bounded by the timeout, so gather never has to be cancelled midway (which
        # would leak the connections already made).
        results = await asyncio.gather(*(self._connect(timeout_s) for _ in range(self._min_size)),
                                       return_exceptions=True)
        opened = [r for r in results if isinstance(r, asyncpg.Connection)]
        failed = [r for r in results if not isinstance(r, asyncpg.Connection)]
        if failed:
            for conn in opened:
                conn.terminate()
            raise failed[0]
        self._closed = False
        self._size += len(opened)
        self._idle.extend(opened)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        self._size -= len(idle)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolClosed("the connection pool is closed"))
        for conn in idle:
            try:
                await asyncio.wait_for(conn.close(), timeout=5.0)
            except (Exception, asyncio.CancelledError):
                conn.terminate()

    def connection(self) -> _Checkout:
        return _Checkout(self)

    async def _connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> asyncpg.Connection:
        return await asyncpg.connect(self._dsn, timeout=timeout_s,
                                     server_settings={"TimeZone": "UTC", "application_name": "saaslab"})

    def pop_idle(self) -> asyncpg.Connection | None:
        """An idle connection if one is at hand, without awaiting; None otherwise."""
        while self._idle and not self._closed:
            conn = self._idle.pop()
            if not conn.is_closed():
                return conn
            self._size -= 1  # its server went away while it sat idle
        return None

    async def acquire(self) -> asyncpg.Connection:
        if self._closed:
            raise PoolClosed("the connection pool is closed")
        conn = self.pop_idle()
        if conn is not None:
            return conn
        if self._size < self._max_size:
            return await self._grow()
        waiter: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._acquire_timeout_s):
                conn = await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._hand_over(waiter.result())  # granted just as we gave up: pass it on
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(f"no database connection free within {self._acquire_timeout_s:g} s") from None
            raise
        return conn if conn is not None else await self._grow()

    async def _grow(self) -> asyncpg.Connection:
        self._size += 1
        try:
            return await self._connect()
        except BaseException:
            self._size -= 1
            self._hand_over(None)
            raise

    def release(self, conn: asyncpg.Connection, *, reusable: bool = True) -> None:
        if self._closed or not reusable or conn.is_closed() or conn.is_in_transaction():
            # A transaction left open would carry its role and tenant into the next request.
            conn.terminate()
            self._size -= 1
            self._hand_over(None)
            return
        self._hand_over(conn)

    def _hand_over(self, conn: asyncpg.Connection | None) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is not None:
            self._idle.append(conn)


class _Checkout:
    """`async with pool.connection() as conn` without the generator machinery of @asynccontextmanager."""

    __slots__ = ("_pool", "_conn")

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        # The common case first: an idle connection, no coroutine to create and await.
        self._conn = self._pool.pop_idle() or await self._pool.acquire()
        return self._conn

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._conn is not None
        self._pool.release(self._conn, reusable=exc is None or _leaves_connection_idle(exc))
        self._conn = None


def _leaves_connection_idle(exc: BaseException) -> bool:
    """Whether a connection is fit to reuse after `exc` ended its checkout.

    Only cancellation can interrupt a query in flight (it surfaces as CancelledError, or as
    TimeoutError from a timeout); after it, and after I/O and driver errors, the connection's
    protocol state is unknown. Errors PostgreSQL reported, and errors of the caller's own code,
    leave it idle (an open transaction is caught separately, in `release`).
    """
    return isinstance(exc, Exception) and not isinstance(
        exc, OSError | asyncpg.InterfaceError | asyncpg.PostgresConnectionError)


def make_pool(settings: Settings) -> Pool:
    """An unopened pool (open it in the lifespan). Single statements run in autocommit; multi-statement
    work opens an explicit transaction."""
    if not settings.database_url:
        raise ValueError("settings.database_url is not set")
    return Pool(settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max)


async def migrate(pool: Pool, scripts: Iterable[Path]) -> None:
    """Apply idempotent SQL scripts in one transaction, serialised across processes by an advisory lock."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        for script in scripts:
            # No arguments: asyncpg sends it with the simple protocol, so one script may hold many statements.
            await conn.execute(script.read_text())


async def ping(pool: Pool, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s), pool.connection() as conn:
        await conn.execute("SELECT 1")
