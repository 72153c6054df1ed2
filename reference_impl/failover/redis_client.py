"""A Redis client that finds the master through Sentinel and asks again when the master changes.

The failure known from redis-py clients after a failover: a client keeps its connection to the old
master, gets READONLY (the old master came back as a replica) or NOREPLICAS, and never asks Sentinel
again. `SentinelClient` asks the Sentinels (`redis.asyncio.sentinel.Sentinel.discover_master`) for the
master, keeps one connection to it, and on READONLY, NOREPLICAS, MASTERDOWN, a refused connection or
a timeout drops it: the next call asks the Sentinels again. redis-py's own retries are off (it
retries 3 times with back-off by default), so each call's outcome is one attempt's, which is what a
caller needs to know:

* `WriteRefused`: certainly not written (no master known, the connection could not be opened, or
  the master refused the command: READONLY, NOREPLICAS);
* `WriteUnknown`: sent, with no answer: it may have been written;
* `NotReplicated` (a `WriteUnknown`): written on the master, but `WAIT` counted fewer replicas than
  asked for within its timeout. Under the `wait` design this is not an acknowledgement: Redis has the
  write and may keep it, or lose it in a failover.

Each carries `retry_after_s`, for a 503 with Retry-After. `wait_replicas` (the `wait` design: 1)
sends `WAIT wait_replicas wait_ms` after each write in the same round trip; the `min_replicas`
design is the server's (reference_impl/failover/redis_cluster.py) and reaches the client as
NOREPLICAS. `pinned` makes a client that never asks Sentinel: the client of the known failure.

Replies are decoded (`decode_responses=True`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, ReadOnlyError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

SERVICE = "lab"
# Refusals that mean "this is not (or no longer) a master that can take writes": ask Sentinel again.
# redis-py turns READONLY into ReadOnlyError and LOADING into BusyLoadingError; these two it leaves as text.
MASTER_GONE = ("NOREPLICAS", "MASTERDOWN")


class RedisUnavailable(Exception):
    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class WriteRefused(RedisUnavailable):
    """Certainly not written."""


class WriteUnknown(RedisUnavailable):
    """Sent, with no answer: it may have been written."""


class NotReplicated(WriteUnknown):
    """Written on the master; WAIT counted fewer replicas than asked for."""


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


class SentinelClient:
    """One connection to the master the Sentinels name (or to `pinned`, never asking).

    One connection, not a pool: a caller that needs concurrency makes one client per task (the drill's
    writers do), and each call's outcome belongs to one known connection to one known master.
    """

    def __init__(self, sentinels: list[tuple[str, int]], service: str = SERVICE, *, timeout_s: float = 0.5,
                 wait_replicas: int = 0, wait_ms: int = 200, retry_after_s: int = 1,
                 pinned: tuple[str, int] | None = None) -> None:
        self.service = service
        self.timeout_s = timeout_s
        self.wait_replicas = wait_replicas
        self.wait_ms = wait_ms
        self.retry_after_s = retry_after_s
        self.pinned = pinned
        self.sentinel = Sentinel(sentinels, sentinel_kwargs={
            "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "retry": _no_retry(),
            "decode_responses": True})
        self.master: str | None = None
        """`address:port` of the master the connection is open to."""
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()

    async def discover(self) -> tuple[str, int]:
        """The master's (address, port), as the first Sentinel that answers names it."""
        if self.pinned is not None:
            return self.pinned
        try:
            host, port = await self.sentinel.discover_master(self.service)
        except MasterNotFoundError as err:
            raise WriteRefused(f"no Sentinel names a master: {err}"[:300], self.retry_after_s) from None
        return str(host), int(port)

    async def _current(self) -> Connection:
        async with self._lock:
            if self._conn is not None and self._conn.is_connected:
                return self._conn
            host, port = await self.discover()
            # A reply may take WAIT's timeout on top of the network's.
            reply_timeout = self.timeout_s + (self.wait_ms / 1000 if self.wait_replicas else 0)
            conn = Connection(host=host, port=port, socket_timeout=reply_timeout,
                              socket_connect_timeout=self.timeout_s, retry=_no_retry(), decode_responses=True)
            try:
                await conn.connect()
            except (RedisError, OSError) as err:
                conn._close()  # noqa: SLF001
                raise WriteRefused(f"master {host}:{port} refused the connection: {type(err).__name__}",
                                   self.retry_after_s) from None
            self._conn, self.master = conn, f"{host}:{port}"
            return conn

    def drop(self) -> None:
        """Forget the master: the next call asks the Sentinels again."""
        conn, self._conn, self.master = self._conn, None, None
        if conn is not None:
            conn._close()  # noqa: SLF001  closing needs no round trip; a paused master would never answer

    async def _run(self, commands: list[tuple[Any, ...]]) -> tuple[list[Any], str]:
        """Send `commands` in one write and read their replies; a refusal that means "not the master"
        drops the connection. Any other error reply is raised as is (after dropping, since replies
        may still be in flight)."""
        conn = await self._current()
        server = self.master or "?"
        replies: list[Any] = []
        try:
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            for _ in commands:
                replies.append(await conn.read_response())
        except BusyLoadingError:  # a replica loading the new master's data: nothing was run
            self.drop()
            raise WriteRefused(f"{server} is loading its data set", self.retry_after_s) from None
        except ResponseError as err:
            self.drop()
            if isinstance(err, ReadOnlyError) or str(err).startswith(MASTER_GONE):
                raise WriteRefused(f"{server} refused: {str(err)[:120]}", self.retry_after_s) from None
            if replies:  # the write was applied; only what came after it failed
                raise NotReplicated(f"{server}: {str(err)[:120]}", self.retry_after_s) from None
            raise
        except (RedisConnectionError, RedisTimeoutError, OSError) as err:
            self.drop()
            raise WriteUnknown(f"{server}: {type(err).__name__}", self.retry_after_s) from None
        return replies, server

    async def write(self, *command: Any) -> tuple[Any, str]:
        """Run one write on the master: (its reply, the master's `address:port`). Under `wait_replicas`
        the reply comes back only once WAIT has counted that many replicas."""
        if not self.wait_replicas:
            (reply,), server = await self._run([command])
            return reply, server
        (reply, acked), server = await self._run([command, ("WAIT", self.wait_replicas, self.wait_ms)])
        if int(acked) < self.wait_replicas:
            raise NotReplicated(f"{server}: WAIT counted {acked} of {self.wait_replicas} replicas within "
                                f"{self.wait_ms} ms", self.retry_after_s)
        return reply, server

    async def read(self, *command: Any) -> tuple[Any, str]:
        """Run one read on the master (the only node that has every acknowledged write); any failure
        is a `WriteRefused` (nothing was changed)."""
        try:
            (reply,), server = await self._run([command])
        except WriteUnknown as err:
            raise WriteRefused(str(err), err.retry_after_s) from None
        return reply, server

    async def close(self) -> None:
        self.drop()
        for s in self.sentinel.sentinels:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.aclose(), 1)
