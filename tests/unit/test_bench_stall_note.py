"""The replay benchmark's reading of kernel-thread stalls: the share of requests they hold up."""

from __future__ import annotations

from bench import httpload
from bench.idempotency import _stall_note


def test_a_stall_holds_up_its_arrivals_and_those_of_the_drain_after_it() -> None:
    # 2.2 ms every 0.512 s is 0.43% of the time stalled; at half busy the drain doubles it.
    stalls = httpload.KernelThreadRuns(51.2, [httpload.KernelThread("kdamond.0", runs=100, ran_ms=220.0)])
    note = _stall_note(stalls, busy=0.5)
    assert "kdamond.0 100 times, 2.2 ms a time (every 0.51 s)" in note
    assert "at 50% busy, about 0.9% of requests" in note


def test_no_slow_kernel_thread_is_said_so() -> None:
    assert _stall_note(httpload.KernelThreadRuns(60.0, []), busy=0.5).startswith("No kernel thread held a core")
