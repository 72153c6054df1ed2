"""The benchmarks' load generator: sends on time, never early, and counts every request once."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from bench import httpload

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def _tiny_server() -> tuple[asyncio.AbstractServer, int, list[int]]:
    """A keep-alive HTTP/1.1 server answering every request 200; it records how many it got."""
    seen = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                seen[0] += 1
                writer.write(RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


def test_the_ticker_never_wakes_before_the_instant_asked_for() -> None:
    async def main() -> list[float]:
        ticker = httpload._Ticker(asyncio.get_running_loop())
        try:
            if sys.platform == "linux":
                assert ticker.precise  # the timerfd, not the loop's millisecond timers
            lateness = []
            start = time.perf_counter()
            for i in range(200):
                instant = start + 0.0003 * (i + 1)
                await ticker.until(instant)
                lateness.append(time.perf_counter() - instant)
            await ticker.until(time.perf_counter() - 1)  # an instant already past returns at once
            return lateness
        finally:
            ticker.close()

    lateness = asyncio.run(main())
    assert len(lateness) == 200 and min(lateness) >= 0


@pytest.mark.parametrize("rate", [500.0, 2000.0])
def test_the_open_loop_sends_exactly_rate_times_seconds_and_times_each(rate: float) -> None:
    async def main() -> tuple[httpload.OpenLoopResult, int]:
        server, port, seen = await _tiny_server()
        try:
            request = httpload.build_request("GET", "/", f"127.0.0.1:{port}")
            result = await httpload.open_loop("127.0.0.1", port, request, rate=rate, seconds=0.5)
            return result, seen[0]
        finally:
            server.close()

    o, seen = asyncio.run(main())
    expected = int(rate * 0.5)
    assert (o.result.requests, o.result.errors, o.dropped, seen) == (expected, 0, 0, expected)
    assert o.result.status_counts == {200: expected}
    assert o.result.latency.count == expected and o.send_lag.count == expected
