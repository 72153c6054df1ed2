"""The benchmarks' load generator: sends on time, never early, and counts every request once."""

from __future__ import annotations

import asyncio
import os
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


def test_the_stall_probe_counts_every_sleep_on_every_core_and_only_late_wakeups_as_stalls() -> None:
    stalls = httpload.probe_stalls(seconds=0.2, over_ms=1000.0)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    assert [c.cpu for c in stalls.cores] == (cores if len(cores) > 1 else [None])
    assert all(c.sleeps >= 10 for c in stalls.cores)  # 1 ms sleeps for 0.2 s, however late the machine wakes them
    assert stalls.stalls == 0  # nothing on this machine sleeps a second late in 0.2 s
    assert 0.0 <= stalls.worst_ms < 1000.0
    assert "0 times" in stalls.sentence() and "in 0.2 s" in stalls.sentence()
    assert all(k.per_run_ms >= httpload.KERNEL_THREAD_MIN_RUN_MS for k in stalls.kernel_threads)


def test_the_stall_probe_names_a_kernel_thread_by_its_runs() -> None:
    thread = httpload.KernelThread("kdamond.0", runs=9, ran_ms=19.8)
    stalls = httpload.MachineStalls(5.0, 1.0, [httpload.CoreStalls(0, 4500, 9, 2.2)], [thread])
    assert thread.per_run_ms == pytest.approx(2.2)
    assert "kdamond.0 9 times, 2.2 ms a time" in stalls.sentence()
    assert "9 times on core 0, in 5 s (the worst 2.2 ms late)" in stalls.sentence()


def test_busy_share_is_rate_times_cpu_per_request() -> None:
    assert httpload.busy_share(2000.0, 400.0) == pytest.approx(0.8)


def test_calibration_finds_the_rate_at_which_the_server_is_half_busy() -> None:
    """A server whose CPU per request grows as its load falls (fewer requests share a wake-up):
    150 us + 300,000 / rate us, so busy 0.3 + rate x 150 us: half busy at 1,333 rps, not at the
    1,750 rps of half its closed-loop saturation (where it is 56% busy)."""
    def open_round(rate: float) -> dict:
        cpu_us = 150 + 300_000 / rate
        return {"rps": rate, "server_cpu_us": cpu_us, "busy_share": httpload.busy_share(rate, cpu_us)}

    calibration = httpload.calibrate_rate(open_round, 1_750.0, 0.5)
    assert calibration.rounds[0]["rate"] == 1_750.0 and calibration.rounds[0]["busy_share"] == pytest.approx(0.5625)
    assert len(calibration.rounds) == httpload.CALIBRATION_ROUNDS
    assert calibration.rate == pytest.approx(1_333, rel=0.01)
    assert open_round(calibration.rate)["busy_share"] == pytest.approx(0.5, rel=0.03)


def test_calibration_converges_where_cpu_per_request_falls_steeply_with_load() -> None:
    """Not a straight line: 600 us a request when alone, falling towards 120 us as requests batch."""
    def open_round(rate: float) -> dict:
        cpu_us = 120 + 480 * 2_000 / (2_000 + rate)
        return {"rps": rate, "server_cpu_us": cpu_us, "busy_share": httpload.busy_share(rate, cpu_us)}

    calibration = httpload.calibrate_rate(open_round, 3_000.0, 0.5)
    assert open_round(calibration.rate)["busy_share"] == pytest.approx(0.5, rel=0.05)


def _round(dropped: int = 0, lag_ms: float = 0.1) -> dict:
    return {"dropped": dropped, "send_lag_p99_ms": lag_ms}


def test_a_median_outvotes_one_flawed_pair_of_four_but_not_two() -> None:
    late = _round(lag_ms=httpload.MAX_SEND_LAG_P99_MS + 1)
    clean = [[_round(), _round()] for _ in range(3)]
    assert httpload.tail_caveat(clean + [[_round(), late]], "pairs") == (
        "", "in 1 of 4 pairs the load generator itself was late (the median of 4 outvotes it)")
    caveat, remark = httpload.tail_caveat(clean[:2] + [[late, _round()], [_round(dropped=3), _round()]], "pairs")
    assert caveat == "unreliable: the load generator itself was late in 2 of 4 pairs" and remark == ""
    assert httpload.tail_caveat([[_round()] for _ in range(3)], "rounds") == ("", "")
    assert httpload.verdict(True, caveat).startswith("not judged") and httpload.verdict(False, caveat).startswith("no")
