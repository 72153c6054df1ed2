"""Redis: redis-py for everything but the hot path, and `ScriptRunner` for the per-request script.

`make_redis` gives the app's general client (readiness checks, tooling): connected lazily, closed
in the lifespan. The one call every /v1 request makes goes through `ScriptRunner` instead, which
measured about ten times cheaper per call than redis-py's asyncio client on this path (connection
pool checkout, Python-side command packing and reply handling per call, against one shared
connection, packing and parsing in C by hiredis).

With Sentinels configured (`SAASLAB_REDIS_SENTINELS`, `sentinel_master`) both find the master through
Sentinel and ask again after a switch: the general client is redis-py's `Sentinel.master_for`, whose
connections ask on each connect and drop themselves on READONLY; `ScriptRunner` asks redis-py's
`Sentinel.discover_master` each time it connects, and drops its connection on READONLY. Asking happens
on connecting only, so a call stays one round trip.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlparse

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from saaslab.settings import Settings, sentinel_addresses

Arg = str | int | float | bytes
# A pending reply: its future, and for a script call its (keys, args), to rerun it after NOSCRIPT.
_Waiter = tuple[asyncio.Future[Any], tuple[Sequence[Arg], Sequence[Arg]] | None]
CONNECT_TIMEOUT_S = 2.0
# A Redis that has not answered for this long is treated as down: its callers get TimeoutError.
REPLY_TIMEOUT_S = 2.0


class Script:
    """A Lua script run by SHA through a redis-py client: EVALSHA, and on NOSCRIPT (a restarted or
    flushed Redis) load it and retry. For callers off the hot path; the hot path uses `ScriptRunner`."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def load(self, redis: Redis) -> None:
        await redis.script_load(self.source)

    async def __call__(self, redis: Redis, keys: Sequence[str], args: Sequence[int | str]) -> Any:
        try:
            try:
                return await redis.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                await self.load(redis)
                return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except ResponseError as e:
            # A script that writes on a demoted master fails as `ERR Error running script ... -READONLY ...`,
            # which redis-py does not take for READONLY: answer it as the lost master it is (the service's 503),
            # and drop the connection so the next call asks the Sentinels again.
            if not _read_only(str(e)):
                raise
            await redis.connection_pool.disconnect()
            raise RedisConnectionError(f"the Redis master became a replica: {e}") from None


@dataclass(frozen=True, slots=True)
class SentinelMaster:
    """Where the Redis master is to be found: the Sentinels, and the name they monitor it under."""

    sentinels: tuple[tuple[str, int], ...]
    name: str

    def sentinel(self) -> Sentinel:
        """redis-py's Sentinel client, which asks the Sentinels in turn (the first that answers)."""
        return Sentinel(self.sentinels, socket_timeout=CONNECT_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S)


def sentinel_master(settings: Settings) -> SentinelMaster | None:
    """`SAASLAB_REDIS_SENTINELS` and `SAASLAB_REDIS_MASTER_NAME`; None without Sentinels (one Redis)."""
    sentinels = sentinel_addresses(settings.redis_sentinels)
    return SentinelMaster(tuple(sentinels), settings.redis_master_name) if sentinels else None


def make_redis(settings: Settings) -> Redis:
    if not settings.redis_url:
        raise ValueError("settings.redis_url is not set")
    # The socket timeouts bound how long a request can hang on a stalled Redis.
    timeouts: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": REPLY_TIMEOUT_S,
                                "health_check_interval": 0}
    master = sentinel_master(settings)
    if master is None:
        return Redis.from_url(settings.redis_url, **timeouts)
    options = parse_url(settings.redis_url)  # the password and database; the master's address is Sentinel's
    auth = {k: options[k] for k in ("username", "password", "db") if options.get(k)}
    return master.sentinel().master_for(master.name, **timeouts, **auth)


class ScriptRunner:
    """Runs one Lua script by EVALSHA over one auto-pipelined connection.

    Each call is its own EVALSHA, run atomically by Redis and answered on its own. Calls made
    during one turn of the event loop leave together in one write, and replies are matched to
    calls in order, so concurrent requests share socket writes and reads but never a reply. A call
    adds no waiting: its batch is written as soon as the loop has run the callbacks already ready.

    A NOSCRIPT reply (Redis restarted, or its script cache was flushed) reruns that call as EVAL,
    which also loads the script for the calls after it. A lost connection fails the calls in flight
    with ConnectionError and the next call reconnects; a Redis silent for `reply_timeout_s` fails
    them with TimeoutError. Plain `redis://`, `rediss://` and `unix://` URLs are supported (with
    password and db); Cluster needs redis-py's client.

    With `sentinel` the runner connects to the master the Sentinels name, asking them on every
    connect, and a READONLY reply (the master it knew is a replica now) drops the connection and fails
    the calls in flight with ConnectionError: the next call asks the Sentinels again.
    """

    def __init__(self, url: str, script: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 reply_timeout_s: float = REPLY_TIMEOUT_S, sentinel: SentinelMaster | None = None) -> None:
        self._options = parse_url(url)
        self._master = sentinel
        self._sentinel = sentinel.sentinel() if sentinel is not None else None
        self.connect_timeout_s = connect_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self._tls = urlparse(url).scheme == "rediss"
        self._script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()
        self._conn: _RespConnection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._queued: list[tuple[bytes, _Waiter]] = []
        self._flush_scheduled = False
        self._closed = False

    def __call__(self, keys: Sequence[Arg], args: Sequence[Arg]) -> asyncio.Future[Any]:
        return self.call_packed(self.pack(keys, args), keys, args)

    def pack(self, keys: Sequence[Arg], args: Sequence[Arg]) -> bytes:
        """The EVALSHA command for `keys` and `args`, for a caller that sends the same call often
        (`call_packed`): packing ten arguments costs more than the rest of a call's client work."""
        return hiredis.pack_command(("EVALSHA", self.sha, len(keys), *keys, *args))

    def call_packed(self, packed: bytes, keys: Sequence[Arg], args: Sequence[Arg]) -> asyncio.Future[Any]:
        """`self(keys, args)` with its command already packed (`pack(keys, args)`)."""
        return self._enqueue(packed, (keys, args))

    def command(self, *args: Arg) -> asyncio.Future[Any]:
        """Any other command (SCRIPT LOAD, a read, a ZREM), on the same connection, in call order."""
        return self._enqueue(hiredis.pack_command(args), None)

    async def load(self) -> None:
        """SCRIPT LOAD once (at startup), so the first calls do not pay the NOSCRIPT detour."""
        await self.command("SCRIPT", "LOAD", self._script)

    @property
    def script(self) -> str:
        return self._script

    def _enqueue(self, packed: bytes, call: tuple[Sequence[Arg], Sequence[Arg]] | None) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Any] = loop.create_future()
        self._queued.append((packed, (result, call)))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return result

    def eval_command(self, keys: Sequence[Arg], args: Sequence[Arg]) -> bytes:
        return hiredis.pack_command(("EVAL", self._script, len(keys), *keys, *args))

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._conn is not None:
            self._conn.close()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()
        self._fail_queued(RedisConnectionError("the Redis script runner is closed"))

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._closed:
            self._fail_queued(RedisConnectionError("the Redis script runner is closed"))
            return
        if not self._queued:
            return
        conn = self._conn
        if conn is None or conn.closed:
            self._conn = None
            if self._connecting is None:  # the queued calls leave once connected
                self._connecting = asyncio.ensure_future(self._connect())
            return
        queued, self._queued = self._queued, []
        conn.send(b"".join(packed for packed, _ in queued), [waiter for _, waiter in queued])

    async def _connect(self) -> None:
        try:
            options = self._options
            if self._master is not None and self._sentinel is not None:
                host, port = await self._sentinel.discover_master(self._master.name)
                options = {**{k: v for k, v in options.items() if k != "path"}, "host": host, "port": port}
            self._conn = await _RespConnection.open(self, options, tls=self._tls)
        except Exception as exc:
            self._fail_queued(exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(
                f"cannot connect to Redis: {type(exc).__name__}: {exc}"))
            return
        finally:
            self._connecting = None
        self._flush()

    def _fail_queued(self, error: Exception) -> None:
        queued, self._queued = self._queued, []
        for _, (result, _) in queued:
            if not result.done():
                result.set_exception(error)


def _read_only(error: str) -> bool:
    """READONLY, for a command, or inside a script's error (`ERR Error running script ... -READONLY ...`)."""
    return error.startswith("READONLY") or " -READONLY " in error


class _RespConnection(asyncio.Protocol):
    """One Redis connection speaking RESP2 through hiredis; replies resolve waiters in order."""

    def __init__(self, runner: ScriptRunner) -> None:
        self._runner = runner
        self._reply_timeout_s = runner.reply_timeout_s
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._waiters: deque[_Waiter] = deque()
        self._transport: asyncio.Transport | None = None
        self._last_reply = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._timed_out = False
        self.closed = False

    @classmethod
    async def open(cls, runner: ScriptRunner, options: dict[str, Any], *, tls: bool) -> _RespConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(runner.connect_timeout_s):
            if "path" in options:
                _, conn = await loop.create_unix_connection(lambda: cls(runner), options["path"])
            else:
                _, conn = await loop.create_connection(
                    lambda: cls(runner), options.get("host", "localhost"), options.get("port", 6379),
                    ssl=ssl.create_default_context() if tls else None)
            try:
                if options.get("password"):
                    user = [options["username"]] if options.get("username") else []
                    await conn.command("AUTH", *user, options["password"])
                if options.get("db"):
                    await conn.command("SELECT", options["db"])
            except BaseException:
                conn.close()
                raise
        return conn

    def command(self, *args: Arg) -> asyncio.Future[Any]:
        result: asyncio.Future[Any] = self._loop.create_future()
        self.send(hiredis.pack_command(args), [(result, None)])
        return result

    def send(self, data: bytes, waiters: list[_Waiter]) -> None:
        if self.closed or self._transport is None:
            error = RedisConnectionError("the connection to Redis is closed")
            for result, _ in waiters:
                if not result.done():
                    result.set_exception(error)
            return
        if not self._waiters:
            self._last_reply = self._loop.time()  # the silence being timed starts now
        self._transport.write(data)
        self._waiters.extend(waiters)
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._reply_timeout_s, self._check_silence)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self._last_reply = self._loop.time()
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                result, call = self._waiters.popleft()
                if isinstance(reply, ResponseError):
                    if call is not None and str(reply).startswith("NOSCRIPT"):
                        self.send(self._runner.eval_command(*call), [(result, None)])
                    elif _read_only(str(reply)):
                        # A master demoted to a replica: a reconnect finds (with Sentinel, asks for) the master.
                        if not result.done():
                            result.set_exception(RedisConnectionError(f"the Redis master is a replica now ({reply})"))
                        assert self._transport is not None
                        self._transport.abort()
                    elif not result.done():
                        result.set_exception(reply)
                elif not result.done():
                    result.set_result(reply)
        except (hiredis.ProtocolError, IndexError):  # garbage, or a reply nobody asked for
            assert self._transport is not None
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        error: Exception = (RedisTimeoutError(f"Redis did not answer within {self._reply_timeout_s:g} s")
                            if self._timed_out
                            else RedisConnectionError(f"the connection to Redis was lost ({exc or 'closed'})"))
        while self._waiters:
            result, _ = self._waiters.popleft()
            if not result.done():
                result.set_exception(error)

    def _check_silence(self) -> None:
        self._watchdog = None
        if not self._waiters or self.closed:
            return
        silent_for = self._loop.time() - self._last_reply
        if silent_for >= self._reply_timeout_s:
            self._timed_out = True
            assert self._transport is not None
            self._transport.abort()
        else:
            self._watchdog = self._loop.call_later(self._reply_timeout_s - silent_for, self._check_silence)
