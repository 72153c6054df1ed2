"""A small, fast HTTP/1.1 load generator for benchmarks (keep-alive connections, asyncio + uvloop).

Locust is the lab's load tool for scenarios; a benchmark needs a client that is never the
bottleneck, so this one speaks just enough HTTP/1.1 over raw sockets: fixed request bytes, a
Content-Length-framed reader, one outstanding request per connection.

Two modes: `closed` (N connections as fast as they can: saturation throughput) and `open`
(a fixed arrival rate; each request timed from its intended send time, so a stall counts).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from saaslab.results import LatencyHistogram


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    status_counts: dict[int, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def build_request(method: str, path: str, host: str, headers: dict[str, str] | None = None,
                  body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


class _Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(request)
        assert self.reader is not None
        return await _read_response(self.reader)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _count(res: LoadResult, status: int) -> None:
    res.status_counts[status] = res.status_counts.get(status, 0) + 1
    if status >= 400:
        res.errors += 1


async def closed_loop(host: str, port: int, request: bytes, *, connections: int, seconds: float) -> LoadResult:
    """Saturation: `connections` clients each send the next request as soon as the last is answered."""
    res = LoadResult(0, 0, seconds)
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        conn = _Conn(host, port)
        try:
            while (start := time.perf_counter()) < deadline:
                status = await conn.send(request)
                res.latency.record_s(time.perf_counter() - start)
                res.requests += 1
                _count(res, status)
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    res.seconds = time.perf_counter() - t0
    return res


WARM_CONNECTIONS = 16
MAX_IN_FLIGHT = 256


@dataclass
class OpenLoopResult:
    result: LoadResult
    send_lag: LatencyHistogram
    """How late the generator itself sent each request: its share of any p99."""
    dropped: int
    """Requests due while `max_in_flight` were outstanding (a stall), dropped rather than queued."""


async def open_loop(host: str, port: int, request: bytes, *, rate: float, seconds: float,
                    max_in_flight: int = MAX_IN_FLIGHT, warm_connections: int = WARM_CONNECTIONS) -> OpenLoopResult:
    """A fixed arrival rate; latency from each request's intended send time (no coordinated omission).

    The event loop's timers tick in milliseconds, so a send can leave up to about a millisecond
    after its intended time; latency counts that lag, alike for every server measured, and the lag's
    own histogram says how much of a p99 is the generator's. (Spinning to the exact time instead
    takes a whole core from the servers and makes them, not the generator, late.) Connections are
    opened before the clock starts. A request due while `max_in_flight` are outstanding is dropped
    and counted apart, not queued: waiting would hide the stall.
    """
    res = LoadResult(0, 0, seconds)
    lag = LatencyHistogram()
    idle: list[_Conn] = []
    for _ in range(warm_connections):
        conn = _Conn(host, port)
        conn.reader, conn.writer = await asyncio.open_connection(host, port)
        idle.append(conn)
    in_flight = dropped = 0

    async def one(intended: float) -> None:
        nonlocal in_flight
        conn = idle.pop() if idle else _Conn(host, port)
        in_flight += 1
        try:
            status = await conn.send(request)
            res.latency.record_s(time.perf_counter() - intended)
            res.requests += 1
            _count(res, status)
            idle.append(conn)
        except OSError:
            res.errors += 1
            conn.close()
        finally:
            in_flight -= 1

    tasks = []
    interval = 1.0 / rate
    t0 = time.perf_counter() + 0.01
    for i in range(int(rate * seconds)):
        intended = t0 + i * interval
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lag.record_s(time.perf_counter() - intended)
        if in_flight >= max_in_flight:
            dropped += 1
            continue
        tasks.append(asyncio.ensure_future(one(intended)))
    await asyncio.gather(*tasks)
    for c in idle:
        c.close()
    res.seconds = time.perf_counter() - t0
    return OpenLoopResult(res, lag, dropped)


def run(coro):  # noqa: ANN001, ANN201 - thin wrapper choosing the fastest loop available
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)
