"""PostgreSQL through asyncpg: a lean connection pool, auto-pipelined reads and start-up migrations.

Why not asyncpg's own `Pool`: its acquire/release (a queue, a proxy object, an inactivity timer
re-armed per release, and a reset query, i.e. a round trip, per release) cost about as much CPU as
the query itself on the hot path. This pool hands out plain connections from a list and keeps the
one guarantee that matters: a connection goes back to the pool only in a clean state (idle, no open
transaction, no operation in flight), otherwise it is terminated and replaced on demand. It does
not reset sessions: callers change session state only transaction-locally (`SET LOCAL`), which
ends with the transaction.

`PipelinedReads` does for the hot path's reads what the Redis script runner does for its calls:
reads that concurrent requests make during one turn of the event loop share one connection and one
round trip instead of taking one each (its docstring says how rows find their way back).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

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


class Transaction:
    """Opens a transaction with `begin` (BEGIN plus any SET LOCAL, one round trip) and ends it.

    COMMIT on success. After an exception, a best-effort ROLLBACK; if the connection is mid-operation
    (cancelled) that fails, the transaction stays open, and the pool terminates the connection.
    """

    __slots__ = ("_conn", "_begin")

    def __init__(self, conn: asyncpg.Connection, begin: str) -> None:
        self._conn = conn
        self._begin = begin

    async def __aenter__(self) -> None:
        await self._conn.execute(self._begin)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc is None:
            await self._conn.execute("COMMIT")
        elif isinstance(exc, Exception) and not self._conn.is_closed():
            with contextlib.suppress(Exception):
                await self._conn.execute("ROLLBACK")


# Reads in one pipeline at most: bounds the reply a batch waits for.
MAX_PIPELINED_READS = 64
# A read's tag, as the first parameter and the first column of a pipelined statement.
READ_TAG = "$1::int4"

_Read = tuple["asyncio.Future[Any]", Sequence[Any], bool]


class PipelinedReads:
    """Reads of concurrent requests, pipelined: one connection and one round trip per batch.

    A read is one execution of a *tagged* statement, whose first parameter and first output column
    are the read's place in its batch (`SELECT $1::int4, ...`; see READ_TAG), so every row goes back
    to the read that asked for it, however many rows each read finds (a point read may find none,
    and reads of different tenants can share a batch without seeing each other's rows). Reads
    submitted during one turn of the event loop with the same statement leave
    together: asyncpg's `fetchmany` sends a Bind and Execute per read and one Sync, in one write,
    and the replies come back together. Like the script runner, a read adds no waiting: its batch
    leaves as soon as the loop has run the callbacks already ready. Under load that turns, say,
    eight reads on eight connections (eight writes, eight wake-ups of eight backends, eight replies
    to parse and dispatch) into one of each, which is most of what a point read costs the service.

    What a read sees is what it would see alone: each execution takes its own snapshot (READ
    COMMITTED), in the implicit transaction of the pipeline, so nothing a read sets transaction-locally
    (the rls design's read functions set the tenant so) outlives the batch on the connection. An error PostgreSQL reports stops a pipeline at the read that
    caused it, so a failed batch of several reads is run again read by read, and one read's error is
    never another's; a failure of the connection or the pool fails every read of the batch.
    """

    def __init__(self, pool: Pool, *, max_batch: int = MAX_PIPELINED_READS) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._queued: dict[str, list[_Read]] = {}
        self._flush_scheduled = False
        self._batches: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks
        self.batches = 0
        """Pipelines sent (a batch retried read by read counts once)."""
        self.reads = 0
        """Reads they carried."""

    def fetch(self, sql: str, args: Sequence[Any], *, one: bool = False) -> asyncio.Future[Any]:
        """Run tagged statement `sql` with `args` (the tag excluded) in the next pipeline: the rows
        without their tag, as tuples; with `one`, the first of them or None."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Any] = loop.create_future()
        reads = self._queued.get(sql)
        if reads is None:
            reads = self._queued[sql] = []
        reads.append((result, args, one))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return result

    def _flush(self) -> None:
        self._flush_scheduled = False
        queued, self._queued = self._queued, {}
        for sql, reads in queued.items():
            for start in range(0, len(reads), self._max_batch):
                batch = asyncio.ensure_future(self._run(sql, reads[start:start + self._max_batch]))
                self._batches.add(batch)
                batch.add_done_callback(self._batches.discard)

    async def _run(self, sql: str, reads: list[_Read]) -> None:
        self.batches += 1
        self.reads += len(reads)
        try:
            rows = await self._pipeline(sql, [(i, *args) for i, (_, args, _) in enumerate(reads)])
        except asyncpg.PostgresError as exc:
            if len(reads) > 1 and not isinstance(exc, asyncpg.PostgresConnectionError):
                for read in reads:  # find the read that failed; the others get their answers
                    await self._run_alone(sql, read)
                return
            _fail(reads, exc)
            return
        except BaseException as exc:
            _fail(reads, exc)
            if not isinstance(exc, Exception):
                raise
            return
        found: list[list[Any]] = [[] for _ in reads]
        for row in rows:
            found[row[0]].append(row[1:])
        for (result, _, one), read_rows in zip(reads, found, strict=True):
            if not result.done():
                result.set_result((read_rows[0] if read_rows else None) if one else read_rows)

    async def _run_alone(self, sql: str, read: _Read) -> None:
        result, args, one = read
        if result.done():  # its request is gone
            return
        try:
            rows = await self._pipeline(sql, [(0, *args)])
        except Exception as exc:
            _fail([read], exc)
            return
        if not result.done():
            result.set_result((rows[0][1:] if rows else None) if one else [row[1:] for row in rows])

    async def _pipeline(self, sql: str, args: list[tuple[Any, ...]]) -> list[Any]:
        async with self._pool.connection() as conn:
            return await conn.fetchmany(sql, args)


def _fail(reads: list[_Read], exc: BaseException) -> None:
    for result, _, _ in reads:
        if not result.done():
            if isinstance(exc, asyncio.CancelledError):
                result.cancel()
            else:
                result.set_exception(exc)


def make_pool(settings: Settings) -> Pool:
    """An unopened pool (open it in the lifespan). Single statements run in autocommit; multi-statement
    work opens an explicit transaction."""
    if not settings.database_url:
        raise ValueError("settings.database_url is not set")
    return Pool(settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max)


class MigrationError(Exception):
    """The schema could not be set up for lack of a right the database user can be given; one line saying which."""


async def migrate(pool: Pool, scripts: Iterable[Path]) -> None:
    """Apply idempotent SQL scripts in one transaction, serialised across processes by an advisory lock.

    A missing privilege (on your own PostgreSQL, a login that may not create roles, say) raises
    `MigrationError` with PostgreSQL's message and hint on one line: the service's start fails with
    it, and the launcher (saaslab/launch.py, `log_reason`) shows that line rather than a traceback's end.
    """
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        for script in scripts:
            # No arguments: asyncpg sends it with the simple protocol, so one script may hold many statements.
            try:
                await conn.execute(script.read_text())
            except asyncpg.InsufficientPrivilegeError as e:
                hint = f"; {e.hint}" if e.hint else ""
                raise MigrationError(f"{e.message} ({script.parent.name}/{script.name}){hint}") from None


@contextlib.asynccontextmanager
async def migrated_pool(database_url: str, scripts: Iterable[Path], *, max_size: int = 2) -> AsyncIterator[Pool]:
    """An open pool on a database the `scripts` have migrated, closed on exit: for what runs beside the
    service (the completer, the reaper, tests) and must not depend on the service having started first."""
    pool = Pool(database_url, min_size=1, max_size=max_size)
    await pool.open()
    try:
        await migrate(pool, scripts)
        yield pool
    finally:
        await pool.close()


async def ping(pool: Pool, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s), pool.connection() as conn:
        await conn.execute("SELECT 1")
