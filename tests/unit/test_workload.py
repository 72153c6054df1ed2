"""Workloads: seeded arrival schedules with the rates and bursts they promise."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenarios.kernel.workload import Burst, TenantSpec, Workload, arrivals, zipf_tenants, zipf_weights
from scenarios.tenancy import LOAD_POINTS, NOISY, QUIET, noisy_neighbour

US = 1_000_000


def _within(count: int, expected: float, sigmas: float = 5.0) -> bool:
    """A Poisson count within `sigmas` standard deviations of its mean."""
    return abs(count - expected) <= sigmas * math.sqrt(expected)


@given(seed=st.integers(0, 2**32 - 1), rate=st.floats(1.0, 200.0))
@settings(max_examples=40, deadline=None)
def test_arrivals_are_sorted_reproducible_and_at_the_rate(seed: int, rate: float) -> None:
    wl = Workload(tenants=(TenantSpec("a", rate=rate), TenantSpec("b", rate=rate / 2)), duration_s=20.0)
    sched = arrivals(wl, seed)
    assert sched == sorted(sched)
    assert sched == arrivals(wl, seed)
    assert all(0 <= t < 20 * US and isinstance(t, int) for t, _ in sched)
    assert _within(sum(1 for _, n in sched if n == "a"), rate * 20)
    assert _within(sum(1 for _, n in sched if n == "b"), rate / 2 * 20)


def test_seeds_give_different_schedules() -> None:
    wl = Workload(tenants=(TenantSpec("a", rate=50.0),), duration_s=5.0)
    assert arrivals(wl, 1) != arrivals(wl, 2)


@given(seed=st.integers(0, 2**32 - 1), mult=st.sampled_from((2.0, 5.0, 10.0)))
@settings(max_examples=30, deadline=None)
def test_burst_multiplies_the_rate_inside_its_window_only(seed: int, mult: float) -> None:
    rate = 40.0
    wl = Workload(tenants=(TenantSpec("a", rate=rate, bursts=(Burst(10.0, 10.0, mult),)),), duration_s=30.0)
    times = [t for t, _ in arrivals(wl, seed)]
    inside = sum(1 for t in times if 10 * US <= t < 20 * US)
    outside = len(times) - inside
    assert _within(inside, rate * mult * 10)
    assert _within(outside, rate * 20)


def test_overlapping_bursts_multiply() -> None:
    spec = TenantSpec("a", rate=3.0, bursts=(Burst(0.0, 10.0, 2.0), Burst(5.0, 10.0, 5.0)))
    assert [spec.rate_at(t) for t in (1.0, 6.0, 12.0, 20.0)] == [6.0, 30.0, 15.0, 3.0]


def test_uniform_process_is_evenly_spaced() -> None:
    wl = Workload(tenants=(TenantSpec("a", rate=10.0),), process="uniform", duration_s=2.0)
    sched = arrivals(wl, 0)
    assert len(sched) == 19
    # Float accumulation, then truncation to whole µs, may land one µs early.
    assert all(0 <= k * 100_000 - t <= 1 for k, (t, _) in enumerate(sched, start=1))
    assert sched == arrivals(wl, 99)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bursty_process_keeps_the_mean_rate_but_clumps(seed: int) -> None:
    rate, duration = 20.0, 600.0
    wl = Workload(tenants=(TenantSpec("a", rate=rate),), process="bursty", duration_s=duration)
    times = [t / US for t, _ in arrivals(wl, seed)]
    assert abs(len(times) - rate * duration) <= 0.15 * rate * duration
    # On/off modulation: counts per second vary far more than a Poisson process's (variance = mean).
    per_second = [0] * int(duration)
    for t in times:
        per_second[int(t)] += 1
    mean = sum(per_second) / len(per_second)
    var = sum((c - mean) ** 2 for c in per_second) / (len(per_second) - 1)
    assert var > 3 * mean


def test_a_burst_leaves_the_other_tenants_arrivals_unchanged() -> None:
    """Each tenant has its own random stream, so the solo baseline sees the very same quiet traffic."""
    for lp in LOAD_POINTS:
        noisy = arrivals(noisy_neighbour(lp), 7)
        solo = arrivals(noisy_neighbour(lp, burst=False), 7)
        assert [a for a in noisy if a[1] != NOISY] == [a for a in solo if a[1] != NOISY]
        n_noisy = sum(1 for a in noisy if a[1] == NOISY)
        n_solo = sum(1 for a in solo if a[1] == NOISY)
        assert n_noisy > 3 * n_solo


def test_noisy_neighbour_offers_the_load_point() -> None:
    wl = noisy_neighbour(0.5, burst=False)
    assert [t.name for t in wl.tenants] == [NOISY, *QUIET]
    assert wl.total_rate() == pytest.approx(0.5 * 4 * 1000 / 20.0)
    assert wl.tenant(NOISY).rate_at(7.0) == wl.tenant(NOISY).rate
    assert noisy_neighbour(0.5).tenant(NOISY).rate_at(5.0) == 10 * wl.tenant(NOISY).rate


def test_zipf_shares_sum_to_one_and_decrease() -> None:
    w = zipf_weights(10, 1.2)
    assert sum(w) == pytest.approx(1.0)
    assert w == sorted(w, reverse=True)
    ts = zipf_tenants(10, 100.0)
    assert sum(t.rate for t in ts) == pytest.approx(100.0)
    assert len({t.name for t in ts}) == 10
